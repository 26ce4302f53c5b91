import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { QmpError } from '../../../src/qmp/protocol.js';
import { arg, validateArguments, type ArgSchema } from '../../../src/qmp/schema.js';

const schema: ArgSchema = {
  id: arg.str(),
  count: arg.optional(arg.int()),
  ratio: arg.optional(arg.number()),
  on: arg.optional(arg.bool()),
  mode: arg.optional(arg.enum(['a', 'b'])),
  list: arg.optional(arg.array(arg.int())),
  opts: arg.optional(arg.object({ size: arg.int(), name: arg.optional(arg.str()) })),
  blob: arg.optional(arg.any()),
};

function errorOf(args: Record<string, unknown>): string {
  try {
    validateArguments(schema, args as never);
  } catch (err) {
    assert.ok(err instanceof QmpError);
    assert.equal(err.errorClass, 'GenericError');
    return err.desc;
  }
  return 'valid';
}

describe('QMP argument validation', () => {
  it('accepts arguments that match the schema', () => {
    assert.equal(errorOf({ id: 'x' }), 'valid');
    assert.equal(errorOf({ id: 'x', count: 3, ratio: 0.5, on: false, mode: 'b', list: [1, 2], opts: { size: 1 }, blob: [{}] }), 'valid');
  });

  it('names a missing parameter', () => {
    assert.equal(errorOf({}), "Parameter 'id' is missing");
    assert.equal(errorOf({ id: 'x', opts: {} }), "Parameter 'opts.size' is missing");
  });

  it('names an unexpected parameter', () => {
    assert.equal(errorOf({ id: 'x', bogus: 1 }), "Parameter 'bogus' is unexpected");
    assert.equal(errorOf({ id: 'x', opts: { size: 1, extra: 2 } }), "Parameter 'opts.extra' is unexpected");
  });

  it('names the expected type of a wrongly typed parameter', () => {
    assert.equal(errorOf({ id: 5 }), "Invalid parameter type for 'id', expected: string");
    assert.equal(errorOf({ id: 'x', count: 1.5 }), "Invalid parameter type for 'count', expected: integer");
    assert.equal(errorOf({ id: 'x', count: '1' }), "Invalid parameter type for 'count', expected: integer");
    assert.equal(errorOf({ id: 'x', ratio: '1' }), "Invalid parameter type for 'ratio', expected: number");
    assert.equal(errorOf({ id: 'x', on: 1 }), "Invalid parameter type for 'on', expected: boolean");
    assert.equal(errorOf({ id: 'x', list: {} }), "Invalid parameter type for 'list', expected: array");
    assert.equal(errorOf({ id: 'x', list: [1, 'x'] }), "Invalid parameter type for 'list[1]', expected: integer");
    assert.equal(errorOf({ id: 'x', opts: [] }), "Invalid parameter type for 'opts', expected: object");
    assert.equal(errorOf({ id: 'x', opts: null }), "Invalid parameter type for 'opts', expected: object");
  });

  it('rejects a value outside an enumeration', () => {
    assert.equal(errorOf({ id: 'x', mode: 'c' }), "Parameter 'mode' does not accept value 'c'");
    assert.equal(errorOf({ id: 'x', mode: 1 }), "Invalid parameter type for 'mode', expected: string");
  });
});
