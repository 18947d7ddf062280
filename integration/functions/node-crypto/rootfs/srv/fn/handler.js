'use strict';
// node-crypto: key derivation, hash chains and AES in Node.js's crypto module.
//
// POST / {"message": str (<= 64 KiB UTF-8; ""), "rounds": int (1..1000; 100)}
//   -> result {"digest": hex, "ciphertext_sha256": hex, "roundtrip_ok": bool}
// PBKDF2-HMAC-SHA256 of the message (`rounds` iterations, a salt picked from
// the salt table by the message's hash), then a SHA-256 chain of `rounds`
// steps over it and the message; and AES-256-CBC encryption of the message
// with the fixed key and IV, decrypted back and compared.
//
// Served by Node's http module (one process, one thread of JS).
// State: key material derived at start with scrypt from a constant secret
// (the AES key as a KeyObject, the IV) and a 4 MiB salt table (an AES-256-CTR
// keystream), which requests read from.
// Node 18 built-in modules only.

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');

const NAME = 'node-crypto';
const PORT = 8080;
const READY_FILE = '/tmp/.lock';
const MAX_BODY = 1 << 20;
const MAX_MESSAGE = 64 << 10;
const MAX_ROUNDS = 1000;
const SALT_BYTES = 16;
const SALT_TABLE_BYTES = 4 << 20;

class BadRequest extends Error {}

const MASTER = crypto.scryptSync('trenv fn-node-crypto secret', 'fixed salt', 96, { N: 1 << 14, r: 8, p: 1 });
const AES_KEY = crypto.createSecretKey(MASTER.subarray(0, 32));
const AES_IV = MASTER.subarray(32, 48);
const SALT_TABLE = (() => {
  const cipher = crypto.createCipheriv('aes-256-ctr', MASTER.subarray(48, 80), MASTER.subarray(80, 96));
  return Buffer.concat([cipher.update(Buffer.alloc(SALT_TABLE_BYTES)), cipher.final()]);
})();

const sha256 = (...parts) => {
  const hash = crypto.createHash('sha256');
  for (const part of parts) hash.update(part);
  return hash.digest();
};

function aes(decipher, input) {
  const c = decipher ? crypto.createDecipheriv('aes-256-cbc', AES_KEY, AES_IV) : crypto.createCipheriv('aes-256-cbc', AES_KEY, AES_IV);
  return Buffer.concat([c.update(input), c.final()]);
}

function handle(request) {
  const message = request.message === undefined ? '' : request.message;
  const rounds = request.rounds === undefined ? 100 : request.rounds;
  if (typeof message !== 'string' || Buffer.byteLength(message) > MAX_MESSAGE) {
    throw new BadRequest(`"message" must be a string of at most ${MAX_MESSAGE} bytes`);
  }
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > MAX_ROUNDS) {
    throw new BadRequest(`"rounds" must be an integer in [1, ${MAX_ROUNDS}]`);
  }
  const plaintext = Buffer.from(message, 'utf8');
  const slot = sha256(plaintext).readUInt32LE(0) % (SALT_TABLE_BYTES / SALT_BYTES);
  const salt = SALT_TABLE.subarray(slot * SALT_BYTES, (slot + 1) * SALT_BYTES);
  let digest = crypto.pbkdf2Sync(plaintext, salt, rounds, 32, 'sha256');
  for (let i = 0; i < rounds; i++) digest = sha256(digest, plaintext);
  const ciphertext = aes(false, plaintext);
  return {
    digest: digest.toString('hex'),
    ciphertext_sha256: sha256(ciphertext).toString('hex'),
    roundtrip_ok: aes(true, ciphertext).equals(plaintext),
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
  handle({ message: 'warm-up', rounds: 10 }); // not counted
  // The server checks its connections' timeouts on an interval timer: once an
  // hour, so that an idle instance does not wake up.
  const server = http.createServer({ connectionsCheckingInterval: 3600e3 }, onRequest);
  server.listen(PORT, '0.0.0.0', () => {
    fs.writeFileSync(READY_FILE, '');
    console.log(`${NAME}: ready on :${PORT} (pid ${process.pid})`);
  });
}

main();
