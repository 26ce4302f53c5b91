import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { JSON_LIMITS, JsonMessageStream, type JsonStreamResult } from '../../../src/qmp/json-stream.js';

function collect(...chunks: string[]): JsonStreamResult[] {
  const out: JsonStreamResult[] = [];
  const stream = new JsonMessageStream((r) => out.push(r));
  for (const c of chunks) stream.feed(Buffer.from(c, 'utf8'));
  return out;
}

const values = (rs: JsonStreamResult[]): unknown[] => rs.map((r) => (r.ok ? r.value : { error: r.error }));

describe('JsonMessageStream', () => {
  it('reads an object split across reads at every byte boundary', () => {
    const text = '{"execute": "query-status", "arguments": {"a": [1, -2.5e3, true, null, "x"]}, "id": 7}';
    for (let cut = 1; cut < text.length; cut++) {
      assert.deepEqual(values(collect(text.slice(0, cut), text.slice(cut))),
        [JSON.parse(text)], `cut at ${cut}`);
    }
  });

  it('reads several objects on one line, in order', () => {
    assert.deepEqual(values(collect('{"a":1}{"b":2} {"c":3}\n')), [{ a: 1 }, { b: 2 }, { c: 3 }]);
  });

  it('waits for an unterminated object until it is closed', () => {
    const out: JsonStreamResult[] = [];
    const stream = new JsonMessageStream((r) => out.push(r));
    stream.feed(Buffer.from('{"execute": "x"\n\n'));
    assert.equal(out.length, 0);
    assert.equal(stream.midMessage, true);
    stream.feed(Buffer.from('}'));
    assert.deepEqual(values(out), [{ execute: 'x' }]);
    assert.equal(stream.midMessage, false);
  });

  it('emits scalars at top level as messages of their own', () => {
    assert.deepEqual(values(collect('42 "s" true [1]\n')), [42, 's', true, [1]]);
  });

  it('accepts single-quoted strings and the escapes QEMU accepts', () => {
    assert.deepEqual(values(collect(`{'a': 'say "hi"', "b": "\\u00e9\\ud83d\\ude00\\n\\'\\/"}`)),
      [{ a: 'say "hi"', b: 'é😀\n\'/' }]);
  });

  it('keeps raw UTF-8 split across reads intact', () => {
    const bytes = Buffer.from('{"n":"ünï"}');
    const out: JsonStreamResult[] = [];
    const stream = new JsonMessageStream((r) => out.push(r));
    stream.feed(bytes.subarray(0, 7));
    stream.feed(bytes.subarray(7));
    assert.deepEqual(values(out), [{ n: 'ünï' }]);
  });

  it('reports syntax errors with QEMU wording and goes on with the next message', () => {
    assert.deepEqual(values(collect('{"execute" "x"}\n{"a":1,}\n{"a" 1}{"ok":1}\n')), [
      { error: 'JSON parse error, missing : in object pair' },
      { error: 'JSON parse error, expecting value' },
      { error: 'JSON parse error, missing : in object pair' },
      { ok: 1 },
    ]);
  });

  it('reports invalid keywords, stray characters and bad numbers, then resynchronises', () => {
    assert.deepEqual(values(collect('garbage {"a":1}\n@ {"b":2}\n1.5e\n{"c":3}')), [
      { error: "JSON parse error, invalid keyword 'garbage'" },
      { a: 1 },
      { error: "JSON parse error, stray '@'" },
      { b: 2 },
      { error: "JSON parse error, stray '1.5e\n'" },
      { c: 3 },
    ]);
  });

  it('rejects non-string keys and unbalanced closers', () => {
    assert.deepEqual(values(collect('{1: 2}\n}\n]\n')), [
      { error: 'JSON parse error, key is not a string in object' },
      { error: 'JSON parse error, expecting value' },
      { error: 'JSON parse error, expecting value' },
    ]);
  });

  it('rejects a control character inside a string', () => {
    const rs = collect('{"a": "x\ty"}\n{"b":1}');
    assert.equal(rs[0]!.ok, false);
    assert.deepEqual(rs.at(-1), { ok: true, value: { b: 1 } });
  });

  it('rejects bad escapes', () => {
    assert.deepEqual(values(collect('"\\x"\n"\\u12g4"\n')), [
      { error: 'JSON parse error, invalid escape sequence in string' },
      { error: 'JSON parse error, invalid hex escape sequence in string' },
    ]);
  });

  it('bounds nesting depth', () => {
    const deep = '['.repeat(JSON_LIMITS.maxNesting + 1);
    const rs = collect(deep);
    assert.deepEqual(values(rs), [{ error: 'JSON nesting depth limit exceeded' }]);
    const ok = collect('['.repeat(JSON_LIMITS.maxNesting) + ']'.repeat(JSON_LIMITS.maxNesting));
    assert.equal(ok.length, 1);
    assert.equal(ok[0]!.ok, true);
  });

  it('does not let "__proto__" keys change the prototype', () => {
    const [r] = collect('{"__proto__": {"polluted": 1}}');
    assert.ok(r!.ok);
    const value = r.value as Record<string, unknown>;
    assert.equal(Object.getPrototypeOf(value), Object.prototype);
    assert.deepEqual(Object.keys(value), ['__proto__']);
  });
});

describe('JsonMessageStream limits', () => {
  const small = { maxTokenBytes: 64, maxTokenCount: 10, maxNesting: 4 };
  const run = (text: string): unknown[] => {
    const out: JsonStreamResult[] = [];
    const stream = new JsonMessageStream((r) => out.push(r), small);
    stream.feed(Buffer.from(text));
    return values(out);
  };

  it('reports one oversized token and recovers at the next message', () => {
    assert.deepEqual(run(`{"a": "${'x'.repeat(100)}"}\n{"ok": 1}`), [
      { error: 'JSON token size limit exceeded' },
      { error: 'JSON parse error, expecting value' }, // the "}" left over from the dropped object
      { ok: 1 },
    ]);
  });

  it('bounds the bytes of one message across tokens', () => {
    assert.deepEqual(run(`{"a": "${'x'.repeat(30)}", "b": "${'y'.repeat(30)}", "c": 1}`)[0], { error: 'JSON token size limit exceeded' });
  });

  it('bounds the token count of one message', () => {
    assert.deepEqual(run('[1,2,3,4,5,6,7,8]\n[1]')[0], { error: 'JSON token count limit exceeded' });
    assert.deepEqual(run('[1,2,3,4]'), [[1, 2, 3, 4]]);
  });

  it('bounds nesting at the configured depth', () => {
    assert.deepEqual(run('[[[[1]]]]'), [[[[[1]]]]]);
    assert.deepEqual(run('[[[[[')[0], { error: 'JSON nesting depth limit exceeded' });
  });
});
