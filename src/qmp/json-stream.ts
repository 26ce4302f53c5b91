// A streaming JSON reader with the behaviour QMP clients expect from QEMU's monitor:
// - input is a byte stream; a message may be split across reads, several may share a line;
// - a message ends when its braces and brackets balance (so an unterminated object gets no
//   answer until it is closed), and a scalar at top level is a message of its own;
// - a lexical error yields one error and the lexer skips ahead to the next structural or
//   control character, so garbage never wedges the connection;
// - QEMU's extensions are accepted: single-quoted strings and the \' escape;
// - limits bound the memory one message may use (total token bytes, token count, nesting).
// Error texts follow QEMU's ("JSON parse error, ..."), because clients match on them.

/** Per-message limits, the same values QEMU uses. */
export const JSON_LIMITS = {
  maxTokenBytes: 64 * 1024 * 1024,
  maxTokenCount: 2 * 1024 * 1024,
  maxNesting: 1024,
} as const;

export interface JsonLimits { maxTokenBytes: number; maxTokenCount: number; maxNesting: number }

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export type JsonStreamResult = { ok: true; value: JsonValue } | { ok: false; error: string };

type TokenType = 'lcurly' | 'rcurly' | 'lsquare' | 'rsquare' | 'colon' | 'comma' | 'string' | 'integer' | 'float' | 'keyword';

interface Token { type: TokenType; text: Buffer }

const enum Lex {
  Start, DqString, DqEscape, SqString, SqEscape, Zero, Minus, Integer, Dot, Fraction, ExpMark, ExpSign,
  ExpDigits, Keyword, Recovery,
}

const CH = {
  quote: 0x22, apostrophe: 0x27, backslash: 0x5c, minus: 0x2d, plus: 0x2b, dot: 0x2e, zero: 0x30, nine: 0x39,
  a: 0x61, z: 0x7a, e: 0x65, E: 0x45, lcurly: 0x7b, rcurly: 0x7d, lsquare: 0x5b, rsquare: 0x5d, colon: 0x3a,
  comma: 0x2c, space: 0x20, tab: 0x09, lf: 0x0a, cr: 0x0d,
} as const;

/** Unwinds feedByte when one token outgrows the size limit (the error is already reported). */
const TOKEN_OVERFLOW = Symbol('token overflow');

const isDigit = (c: number): boolean => c >= CH.zero && c <= CH.nine;
const isWhitespace = (c: number): boolean => c === CH.space || c === CH.tab || c === CH.lf || c === CH.cr;
const isStructural = (c: number): boolean =>
  c === CH.lcurly || c === CH.rcurly || c === CH.lsquare || c === CH.rsquare || c === CH.colon || c === CH.comma;
/** Bytes allowed inside a string: no control characters, and never 0xFE/0xFF (invalid in UTF-8). */
const isStringByte = (c: number): boolean => c >= 0x20 && c <= 0xfd;

/**
 * Feed bytes with `feed`; `onMessage` is called once per complete top-level value or error,
 * in input order.
 */
export class JsonMessageStream {
  private state = Lex.Start;
  private token = Buffer.alloc(64);
  private tokenLength = 0;
  private tokens: Token[] = [];
  private pendingBytes = 0;
  private braces = 0;
  private brackets = 0;

  constructor(
    private readonly onMessage: (result: JsonStreamResult) => void,
    private readonly limits: JsonLimits = JSON_LIMITS,
  ) {}

  feed(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      try {
        for (; i < chunk.length; i++) this.feedByte(chunk[i]!);
      } catch (err) {
        if (err !== TOKEN_OVERFLOW) throw err;
        i++; // the byte that overflowed is dropped with its token; go on in recovery
      }
    }
  }

  /** True while part of a message has been read (useful to tell a clean end of input from a truncated one). */
  get midMessage(): boolean {
    return this.tokens.length > 0 || (this.state !== Lex.Start && this.state !== Lex.Recovery);
  }

  private append(c: number): void {
    if (this.tokenLength === this.token.length) {
      const bigger = Buffer.alloc(this.token.length * 2);
      this.token.copy(bigger, 0, 0, this.tokenLength);
      this.token = bigger;
    }
    this.token[this.tokenLength++] = c;
    if (this.tokenLength > this.limits.maxTokenBytes) {
      this.tokenLength = 0;
      this.state = Lex.Recovery;
      this.fail('JSON token size limit exceeded');
      throw TOKEN_OVERFLOW;
    }
  }

  private finishToken(type: TokenType): void {
    const text = Buffer.from(this.token.subarray(0, this.tokenLength));
    this.tokenLength = 0;
    this.state = Lex.Start;
    this.pushToken({ type, text });
  }

  private lexError(): void {
    const text = this.token.subarray(0, this.tokenLength).toString('utf8');
    this.tokenLength = 0;
    this.state = Lex.Recovery;
    this.fail(`JSON parse error, stray '${text}'`);
  }

  private fail(error: string): void {
    this.tokens = [];
    this.pendingBytes = 0;
    this.braces = 0;
    this.brackets = 0;
    this.onMessage({ ok: false, error });
  }

  private feedByte(c: number): void {
    // Each state either consumes c, or ends its token and lets Start look at c again.
    for (;;) {
      switch (this.state) {
        case Lex.Recovery:
          // Skip up to a point where a new message can plausibly begin.
          if (isStructural(c) || (c < 0x20 && c !== CH.tab) || c >= 0xfe) { this.state = Lex.Start; continue; }
          return;
        case Lex.Start:
          if (isWhitespace(c)) return;
          if (c === CH.lcurly) { this.append(c); return this.finishToken('lcurly'); }
          if (c === CH.rcurly) { this.append(c); return this.finishToken('rcurly'); }
          if (c === CH.lsquare) { this.append(c); return this.finishToken('lsquare'); }
          if (c === CH.rsquare) { this.append(c); return this.finishToken('rsquare'); }
          if (c === CH.colon) { this.append(c); return this.finishToken('colon'); }
          if (c === CH.comma) { this.append(c); return this.finishToken('comma'); }
          this.append(c);
          if (c === CH.quote) this.state = Lex.DqString;
          else if (c === CH.apostrophe) this.state = Lex.SqString;
          else if (c === CH.zero) this.state = Lex.Zero;
          else if (isDigit(c)) this.state = Lex.Integer;
          else if (c === CH.minus) this.state = Lex.Minus;
          else if (c >= CH.a && c <= CH.z) this.state = Lex.Keyword;
          else this.lexError();
          return;
        case Lex.DqString:
        case Lex.SqString: {
          const close = this.state === Lex.DqString ? CH.quote : CH.apostrophe;
          if (!isStringByte(c)) { this.append(c); this.lexError(); return; }
          this.append(c);
          if (c === close) this.finishToken('string');
          else if (c === CH.backslash) this.state = this.state === Lex.DqString ? Lex.DqEscape : Lex.SqEscape;
          return;
        }
        case Lex.DqEscape:
        case Lex.SqEscape:
          // Which escapes are valid is the parser's business; the lexer only keeps the string intact.
          this.append(c);
          if (!isStringByte(c)) { this.lexError(); return; }
          this.state = this.state === Lex.DqEscape ? Lex.DqString : Lex.SqString;
          return;
        case Lex.Minus:
          this.append(c);
          if (c === CH.zero) this.state = Lex.Zero;
          else if (isDigit(c)) this.state = Lex.Integer;
          else this.lexError();
          return;
        case Lex.Zero:
          if (c === CH.dot) { this.append(c); this.state = Lex.Dot; return; }
          if (isDigit(c)) { this.append(c); this.lexError(); return; }
          this.finishToken('integer');
          continue;
        case Lex.Integer:
          if (isDigit(c)) { this.append(c); return; }
          if (c === CH.dot) { this.append(c); this.state = Lex.Dot; return; }
          if (c === CH.e || c === CH.E) { this.append(c); this.state = Lex.ExpMark; return; }
          this.finishToken('integer');
          continue;
        case Lex.Dot:
          this.append(c);
          if (isDigit(c)) this.state = Lex.Fraction;
          else this.lexError();
          return;
        case Lex.Fraction:
          if (isDigit(c)) { this.append(c); return; }
          if (c === CH.e || c === CH.E) { this.append(c); this.state = Lex.ExpMark; return; }
          this.finishToken('float');
          continue;
        case Lex.ExpMark:
          this.append(c);
          if (c === CH.plus || c === CH.minus) this.state = Lex.ExpSign;
          else if (isDigit(c)) this.state = Lex.ExpDigits;
          else this.lexError();
          return;
        case Lex.ExpSign:
          this.append(c);
          if (isDigit(c)) this.state = Lex.ExpDigits;
          else this.lexError();
          return;
        case Lex.ExpDigits:
          if (isDigit(c)) { this.append(c); return; }
          this.finishToken('float');
          continue;
        case Lex.Keyword:
          if (c >= CH.a && c <= CH.z) { this.append(c); return; }
          this.finishToken('keyword');
          continue;
      }
    }
  }

  private pushToken(token: Token): void {
    switch (token.type) {
      case 'lcurly': this.braces++; break;
      case 'rcurly': this.braces--; break;
      case 'lsquare': this.brackets++; break;
      case 'rsquare': this.brackets--; break;
      default: break;
    }
    this.tokens.push(token);
    this.pendingBytes += token.text.length;
    if (this.braces < 0 || this.brackets < 0 || (this.braces === 0 && this.brackets === 0)) {
      const tokens = this.tokens;
      this.tokens = [];
      this.pendingBytes = 0;
      this.braces = 0;
      this.brackets = 0;
      this.onMessage(parseTokens(tokens));
    } else if (this.pendingBytes > this.limits.maxTokenBytes) {
      this.fail('JSON token size limit exceeded');
    } else if (this.tokens.length > this.limits.maxTokenCount) {
      this.fail('JSON token count limit exceeded');
    } else if (this.braces + this.brackets > this.limits.maxNesting) {
      this.fail('JSON nesting depth limit exceeded');
    }
  }
}

class JsonSyntaxError extends Error {}

/** Recursive descent over one message's tokens (nesting is bounded by the stream's limit). */
function parseTokens(tokens: Token[]): JsonStreamResult {
  let pos = 0;
  const fail = (what: string): never => { throw new JsonSyntaxError(`JSON parse error, ${what}`); };
  const next = (): Token => tokens[pos++] ?? fail('premature EOI');
  const peek = (): Token => tokens[pos] ?? fail('premature EOI');

  const value = (): JsonValue => {
    const token = peek();
    switch (token.type) {
      case 'lcurly': return object();
      case 'lsquare': return array();
      case 'string': pos++; return decodeString(token.text, fail);
      case 'integer':
      case 'float': pos++; return Number(token.text.toString('latin1'));
      case 'keyword': {
        pos++;
        const word = token.text.toString('latin1');
        if (word === 'true') return true;
        if (word === 'false') return false;
        if (word === 'null') return null;
        return fail(`invalid keyword '${word}'`);
      }
      default: return fail('expecting value');
    }
  };

  const object = (): JsonValue => {
    pos++; // '{'
    const result: { [key: string]: JsonValue } = {};
    if (peek().type === 'rcurly') { pos++; return result; }
    for (;;) {
      const keyToken = peek();
      const key = value();
      if (typeof key !== 'string' || keyToken.type !== 'string') fail('key is not a string in object');
      if (next().type !== 'colon') fail('missing : in object pair');
      Object.defineProperty(result, key as string, { value: value(), enumerable: true, writable: true, configurable: true });
      const separator = next();
      if (separator.type === 'rcurly') return result;
      if (separator.type !== 'comma') fail('expected separator in dict');
    }
  };

  const array = (): JsonValue => {
    pos++; // '['
    const result: JsonValue[] = [];
    if (peek().type === 'rsquare') { pos++; return result; }
    for (;;) {
      result.push(value());
      const separator = next();
      if (separator.type === 'rsquare') return result;
      if (separator.type !== 'comma') fail('expected separator in list');
    }
  };

  try {
    return { ok: true, value: value() };
  } catch (err) {
    if (err instanceof JsonSyntaxError) return { ok: false, error: err.message };
    throw err;
  }
}

const SIMPLE_ESCAPES: Record<number, number> = {
  0x22: 0x22, 0x27: 0x27, 0x5c: 0x5c, 0x2f: 0x2f, 0x62: 0x08, 0x66: 0x0c, 0x6e: 0x0a, 0x72: 0x0d, 0x74: 0x09,
};

/** Turns a quoted string token (either quote style) into its text; raw bytes are UTF-8. */
function decodeString(text: Buffer, fail: (what: string) => never): string {
  let out = '';
  let runStart = 1;
  const end = text.length - 1; // the closing quote
  let i = 1;
  while (i < end) {
    if (text[i] !== CH.backslash) { i++; continue; }
    out += text.subarray(runStart, i).toString('utf8');
    const escape = text[i + 1]!;
    if (escape === 0x75 /* u */) {
      const hex = text.subarray(i + 2, i + 6).toString('latin1');
      if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail('invalid hex escape sequence in string');
      let code = parseInt(hex, 16);
      i += 6;
      // A high surrogate followed by an escaped low surrogate is one character.
      if (code >= 0xd800 && code <= 0xdbff && text[i] === CH.backslash && text[i + 1] === 0x75) {
        const low = text.subarray(i + 2, i + 6).toString('latin1');
        const lowCode = /^[0-9a-fA-F]{4}$/.test(low) ? parseInt(low, 16) : -1;
        if (lowCode >= 0xdc00 && lowCode <= 0xdfff) {
          code = 0x10000 + ((code - 0xd800) << 10) + (lowCode - 0xdc00);
          i += 6;
        }
      }
      if (code === 0 || (code >= 0xd800 && code <= 0xdfff)) fail(`\\u${hex} is not a valid Unicode character`);
      out += String.fromCodePoint(code);
    } else {
      const simple = SIMPLE_ESCAPES[escape];
      if (simple === undefined) fail('invalid escape sequence in string');
      out += String.fromCharCode(simple!);
      i += 2;
    }
    runStart = i;
  }
  return out + text.subarray(runStart, end).toString('utf8');
}
