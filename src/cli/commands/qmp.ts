// `tsvirt qmp SOCKET [COMMAND [key=value ...|JSON]]`: one QMP command, printing its return as
// JSON (exit 1 with a one-line error on an error reply), or, without COMMAND, an interactive
// shell. SOCKET is a unix socket path, unix:PATH or tcp:HOST:PORT; it works with QEMU too.
import type { Command } from 'commander';

export function register(program: Command): void {
  program
    .command('qmp')
    .description('talk to a QMP monitor (tsvirt or QEMU): run one command, or an interactive shell without COMMAND')
    .argument('<socket>', 'unix socket path, unix:PATH or tcp:HOST:PORT')
    .argument('[command]', 'QMP command, e.g. query-status')
    .argument('[args...]', 'arguments as key=value (value parsed as JSON when it is JSON) or one JSON object')
    .option('--timeout <ms>', 'bound on connecting and on each command', '10000')
    .action(async (socket: string, command: string | undefined, args: string[], options: { timeout: string }) => {
      // Loaded on use, like every subcommand's implementation.
      const { QmpClient, QmpCommandError } = await import('../../qmp/client.js');
      const { parseCommandArguments, runShell } = await import('../../qmp/shell.js');
      const timeoutMs = Number(options.timeout);
      if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new Error(`--timeout ${options.timeout} is not a number of milliseconds`);
      const commandArgs = command === undefined ? undefined : parseCommandArguments(args);
      const client = await QmpClient.connect(socket, { timeoutMs });
      try {
        if (command === undefined) {
          process.exitCode = await runShell(client, {
            input: process.stdin, output: process.stdout, errors: process.stderr, terminal: Boolean(process.stdin.isTTY),
          });
          return;
        }
        try {
          const result = await client.execute(command, commandArgs);
          process.stdout.write(JSON.stringify(result, null, 2) + '\n');
        } catch (err) {
          if (!(err instanceof QmpCommandError)) throw err;
          process.stderr.write(`tsvirt qmp: ${command}: ${err.errorClass}: ${err.desc}\n`);
          process.exitCode = 1;
        }
      } finally {
        client.close();
      }
    });
}
