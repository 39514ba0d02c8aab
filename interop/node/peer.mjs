// The interop peer process: one long-lived Node.js (26, with OpenSSL 3.5) per test
// session, driven by interop/tests/interop_node.py over a JSON-lines protocol.
//
//   request  (one line on stdin):  {"id": 7, "op": "openssl.mlkem.encaps", "args": {...}}
//   response (one line on stdout): {"id": 7, "ok": true, "result": {...}}
//                               or {"id": 7, "ok": false, "error": "...", "code": "..."}
//
// Byte strings travel as base64 in both directions.  Requests are handled
// concurrently and answered by id, possibly out of order, so an operation that has
// to wait (a TLS server accepting a connection: node/tls.mjs) does not block the others.
// The process exits when stdin closes, once it has answered every request.  Nothing but responses is written to stdout.

import readline from 'node:readline';

import { ops as liboqsOps } from './liboqs.mjs';
import { ops as opensslOps } from './openssl.mjs';
import { ops as tlsOps } from './tls.mjs';

const OPS = {
  ...opensslOps,
  ...liboqsOps,
  ...tlsOps,
  ping: () => ({}),
  ops: () => ({ ops: Object.keys(OPS).sort() }),
};

function respond(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

async function handle(line) {
  let id = null;
  try {
    const request = JSON.parse(line);
    id = request.id ?? null;
    const op = Object.hasOwn(OPS, request.op) ? OPS[request.op] : undefined;
    if (op === undefined) {
      throw Object.assign(new Error(`unknown op ${JSON.stringify(request.op)}`),
        { code: 'UNKNOWN_OP' });
    }
    const result = await op(request.args ?? {});
    respond({ id, ok: true, result });
  } catch (err) {
    respond({
      id,
      ok: false,
      error: String(err?.message ?? err),
      code: String(err?.code ?? err?.name ?? 'Error'),
    });
  }
}

const pending = new Set();
const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', (line) => {
  if (line.trim() === '') return;
  const task = handle(line);
  pending.add(task);
  task.finally(() => pending.delete(task));
});
// stdin closed: answer what was asked, then exit (exit explicitly: a module may hold
// the event loop open).
lines.on('close', async () => {
  await Promise.allSettled([...pending]);
  process.exit(0);
});
