// The QMP control plane: server (serves a QmpTarget such as Machine), client, registry.
export * from './target.js';
export * from './protocol.js';
export { JsonMessageStream, JSON_LIMITS, type JsonValue, type JsonStreamResult } from './json-stream.js';
export * from './schema.js';
export * from './registry.js';
export { createCoreRegistry, registerCoreCommands, CORE_EVENTS } from './commands.js';
export { parseQmpEndpoint, QmpAddressError, type QmpEndpoint } from './address.js';
export { QmpServer, startQmpServers, type QmpListenerInfo } from './server.js';
export { QmpClient, QmpCommandError, QmpConnectionError, parseClientAddress, type QmpClientOptions } from './client.js';
