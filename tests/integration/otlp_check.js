// SPDX-License-Identifier: Apache-2.0
// Checks OTLP/HTTP JSON trace export bodies against the OTLP protobuf schema,
// with the protobufjs code @opentelemetry/otlp-transformer generates from the
// opentelemetry-proto .proto files (scripts/get-otlp-schema.sh fetches it).
//
//   node otlp_check.js NODE_MODULES     (otlprecv.py runs it)
//
// Reads one body a line, base64-encoded, and answers each with one line: a
// JSON array of errors, empty when the body is an ExportTraceServiceRequest
// in the OTLP JSON encoding (the protobuf JSON mapping with OTLP's rules):
//   - the ids (traceId, spanId, parentSpanId of spans and links) are
//     lower-case hex of 16 and 8 bytes, not base64 (OTLP's exception);
//   - the body goes through the schema's fromObject, verify, encode, decode
//     and toObject (int64s as strings, enums as numbers, bytes as base64) and
//     must come back as it was: a field the schema does not have (a name not
//     in lowerCamelCase, a typo) is dropped and missed; a value of the wrong
//     JSON type (an int64 as a number, an enum as a name, a uint32 as a
//     string, a bool as a string) comes back changed; an enum number the
//     schema does not define fails verify; a message that is not an object
//     fails fromObject.
'use strict';

const path = require('path');
const readline = require('readline');

const modules = process.argv[2];
if (!modules) {
  process.stderr.write('usage: node otlp_check.js NODE_MODULES\n');
  process.exit(2);
}
const root = require(path.join(modules, '@opentelemetry', 'otlp-transformer', 'build', 'src',
                               'generated', 'root.js'));
const Request = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;
const ID_BYTES = {traceId: 16, spanId: 8, parentSpanId: 8};
const arr = (v) => (Array.isArray(v) ? v : []);

// The id fields of every span and link: fn(object, field, where).
function eachId(body, fn) {
  if (!body || typeof body !== 'object') return;
  arr(body.resourceSpans).forEach((rs, i) => {
    arr(rs && rs.scopeSpans).forEach((ss, j) => {
      arr(ss && ss.spans).forEach((s, k) => {
        if (!s || typeof s !== 'object') return;
        const w = `resourceSpans[${i}].scopeSpans[${j}].spans[${k}]`;
        for (const f of Object.keys(ID_BYTES)) fn(s, f, w);
        arr(s.links).forEach((l, n) => {
          if (l && typeof l === 'object') ['traceId', 'spanId'].forEach((f) => fn(l, f, `${w}.links[${n}]`));
        });
      });
    });
  });
}

function hexToBase64(errors) {
  return (o, f, w) => {
    if (!(f in o)) {
      if (f !== 'parentSpanId') errors.push(`${w}.${f}: missing`);
      return;
    }
    const v = o[f];
    const n = ID_BYTES[f];
    if (typeof v !== 'string' || !/^([0-9a-f]{2})*$/.test(v) ||
        (v.length !== 2 * n && !(f === 'parentSpanId' && v === ''))) {
      errors.push(`${w}.${f}: ${JSON.stringify(v)} is not ${n} bytes as lower-case hex`);
      return;
    }
    o[f] = Buffer.from(v, 'hex').toString('base64');
  };
}

function base64ToHex(o, f) {
  if (typeof o[f] === 'string') o[f] = Buffer.from(o[f], 'base64').toString('hex');
}

// What came back (out) against what was sent (sent): the same, but for an
// empty array, which protobuf does not keep.
function compare(sent, out, where, errors) {
  if (sent !== null && typeof sent === 'object') {
    if (Array.isArray(sent) !== Array.isArray(out) || out === null || typeof out !== 'object') {
      errors.push(`${where}: ${JSON.stringify(sent).slice(0, 80)} came back as ${JSON.stringify(out)}`);
      return;
    }
    for (const k of Object.keys(sent)) {
      const w = Array.isArray(sent) ? `${where}[${k}]` : `${where}.${k}`;
      if (!(k in out)) {
        if (!(Array.isArray(sent[k]) && sent[k].length === 0))
          errors.push(`${w}: not a field of the schema here (or a value it cannot hold)`);
        continue;
      }
      compare(sent[k], out[k], w, errors);
    }
    for (const k of Object.keys(out))
      if (!(k in sent)) errors.push(`${where}.${k}: appeared in the round trip`);
  } else if (sent !== out) {
    errors.push(`${where}: ${JSON.stringify(sent)} came back as ${JSON.stringify(out)} ` +
                '(int64 as a decimal string, enum as a number, the field\'s JSON type)');
  }
}

function check(text) {
  const errors = [];
  let sent;
  let body;
  try {
    sent = JSON.parse(text);
    body = JSON.parse(text);
  } catch (e) {
    return [`not JSON: ${e.message}`];
  }
  if (!sent || typeof sent !== 'object' || Array.isArray(sent)) return ['not a JSON object'];
  eachId(body, hexToBase64(errors));
  if (errors.length) return errors;
  let out;
  try {
    const msg = Request.fromObject(body);
    const bad = Request.verify(msg);
    if (bad) return [`verify: ${bad}`];
    const decoded = Request.decode(Request.encode(msg).finish());
    out = Request.toObject(decoded, {longs: String, enums: Number, bytes: String, json: true});
  } catch (e) {
    return [`fromObject: ${e.message}`];
  }
  eachId(out, base64ToHex);
  compare(sent, out, 'request', errors);
  return errors;
}

const rl = readline.createInterface({input: process.stdin, crlfDelay: Infinity});
rl.on('line', (line) => {
  const errors = check(Buffer.from(line, 'base64').toString('utf8'));
  process.stdout.write(JSON.stringify(errors) + '\n');
});
