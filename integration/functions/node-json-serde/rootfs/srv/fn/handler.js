'use strict';
// node-json-serde: JSON serialisation and parsing in Node.js, allocating heavily.
//
// POST / {"size": int (0..5000; 100)}
//   -> result {"sha256": hex, "records": n, "state_sha256": hex}
// Builds a document of `size` records from a generator seeded by the request,
// JSON.stringify's it, JSON.parse's it back and hashes the canonical dump
// (sorted keys) followed by the digest of a 16 MiB scratch buffer filled from
// the same seed and turned into 21 MB of base64 strings: every request
// allocates and drops tens of MB (JS objects, strings, ArrayBuffers), so
// V8's garbage collector frees and gives back memory between requests.
// "state_sha256" hashes `size` records sampled evenly across the startup
// structure.
//
// Served by Node's http module (one process, one thread of JS).
// State: about 40 MB of JS objects (65000 records), built at start.
// Node 18 built-in modules only.

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');

const NAME = 'node-json-serde';
const PORT = 8080;
const READY_FILE = '/tmp/.lock';
const MAX_BODY = 1 << 20;
const MAX_SIZE = 5000;
const STATE_RECORDS = 65000;
const STATE_CHUNK = 1000;
const SCRATCH_BYTES = 16 << 20;
const SLICE_BYTES = 64 << 10;

const WORDS = ('alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima ' +
  'mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu').split(' ');
const CITIES = ['Berlin', 'Lisbon', 'Nairobi', 'Osaka', 'Quito', 'Reykjavik', 'Sydney', 'Toronto'];

class BadRequest extends Error {}

// mulberry32: a small deterministic 32-bit generator.
function generator(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

const seedOf = (text) => crypto.createHash('sha256').update(text).digest().readUInt32LE(0);
const pick = (rand, list) => list[rand() % list.length];

function makeRecord(rand, i) {
  const name = `${pick(rand, WORDS)}-${pick(rand, WORDS)}-${String(rand() % 1e6).padStart(6, '0')}`;
  const history = [];
  for (let k = rand() % 5; k > 0; k--) history.push({ t: 1600000000 + (rand() % 1e8), v: (rand() % 2000) - 1000 });
  return {
    id: i,
    name,
    email: `${name}@example.org`,
    active: (rand() & 1) === 1,
    score: (rand() % 10000000) / 10000,
    tags: Array.from({ length: 1 + (rand() % 5) }, () => pick(rand, WORDS)),
    address: { street: `${1 + (rand() % 499)} ${pick(rand, WORDS)} Street`, city: pick(rand, CITIES), zip: String(rand() % 1e5).padStart(5, '0') },
    history,
    note: rand() % 10 < 3 ? null : Array.from({ length: 8 }, () => pick(rand, WORDS)).join(' '),
  };
}

function makeDocument(seed, n) {
  const rand = generator(seedOf(seed));
  const records = [];
  for (let i = 0; i < n; i++) records.push(makeRecord(rand, i));
  return { seed, count: n, records };
}

// JSON with object keys sorted at every level (a canonical form).
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

// SHA-256 of a scratch buffer filled from `seed` (an AES-256-CTR keystream),
// hashed through base64 strings of its slices: tens of MB of garbage outside
// and inside V8's heap.
function scratchDigest(seed) {
  const key = crypto.createHash('sha256').update(seed).digest();
  const cipher = crypto.createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const buf = cipher.update(Buffer.alloc(SCRATCH_BYTES));
  cipher.final();
  const slices = [];
  for (let off = 0; off < SCRATCH_BYTES; off += SLICE_BYTES) slices.push(buf.toString('base64', off, off + SLICE_BYTES));
  const hash = crypto.createHash('sha256');
  for (const s of slices) hash.update(s);
  return hash.digest();
}

// The startup structure, parsed from JSON text like a loaded data set (a
// chunk at a time, so that the text is young garbage, collected as it goes).
function loadState(n) {
  const rand = generator(seedOf(`${NAME}:state`));
  const records = [];
  for (let i = 0; i < n; i += STATE_CHUNK) {
    const chunk = [];
    for (let j = i; j < Math.min(n, i + STATE_CHUNK); j++) chunk.push(makeRecord(rand, j));
    for (const record of JSON.parse(JSON.stringify(chunk))) records.push(record);
  }
  return { count: n, records };
}

const STATE = loadState(STATE_RECORDS);

function handle(request) {
  const size = request.size === undefined ? 100 : request.size;
  if (!Number.isInteger(size) || size < 0 || size > MAX_SIZE) {
    throw new BadRequest(`"size" must be an integer in [0, ${MAX_SIZE}]`);
  }
  const seed = `${NAME}:${size}`;
  const parsed = JSON.parse(JSON.stringify(makeDocument(seed, size)));
  const digest = crypto.createHash('sha256').update(canonical(parsed)).update(scratchDigest(seed)).digest('hex');
  const records = STATE.records;
  const sample = [];
  for (let k = 0; k < size; k++) sample.push(records[Math.floor((k * records.length) / size)]);
  return {
    sha256: digest,
    records: parsed.records.length,
    state_sha256: crypto.createHash('sha256').update(canonical(sample)).digest('hex'),
  };
}

let requests = 0; // POST / requests served by this process

function serve(body) {
  requests += 1;
  let request;
  try {
    request = JSON.parse(body.toString('utf8'));
  } catch (e) {
    return [400, { error: `bad JSON: ${e.message}` }];
  }
  if (request === null || typeof request !== 'object' || Array.isArray(request)) {
    return [400, { error: 'the body must be a JSON object' }];
  }
  try {
    return [200, { function: NAME, result: handle(request), requests, pid: process.pid }];
  } catch (e) {
    return e instanceof BadRequest ? [400, { error: e.message }] : [500, { error: String(e) }];
  }
}

function reply(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), Connection: 'close' });
  res.end(body);
}

function onRequest(req, res) {
  if (req.method === 'GET' && req.url === '/healthz') return reply(res, 200, 'ok', 'text/plain');
  if (req.method !== 'POST' || req.url !== '/') return reply(res, 404, '{"error": "not found"}');
  const chunks = [];
  let length = 0;
  req.on('data', (chunk) => {
    length += chunk.length;
    if (length <= MAX_BODY) chunks.push(chunk);
  });
  req.on('end', () => {
    if (length > MAX_BODY) return reply(res, 413, '{"error": "body too large"}');
    const [status, doc] = serve(Buffer.concat(chunks));
    reply(res, status, JSON.stringify(doc));
  });
}

function main() {
  process.on('SIGTERM', () => process.exit(0));
  process.on('SIGINT', () => process.exit(0));
  fs.rmSync(READY_FILE, { force: true });
  handle({ size: 100 }); // warm-up (not counted)
  // The server checks its connections' timeouts on an interval timer: once an
  // hour, so that an idle instance does not wake up.
  const server = http.createServer({ connectionsCheckingInterval: 3600e3 }, onRequest);
  server.listen(PORT, '0.0.0.0', () => {
    fs.writeFileSync(READY_FILE, '');
    console.log(`${NAME}: ready on :${PORT} (pid ${process.pid}), ${STATE.records.length} records`);
  });
}

main();
