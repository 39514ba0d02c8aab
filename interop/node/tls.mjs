// TLS 1.3 through Node's tls module (OpenSSL 3.5): a server and a client that the
// interop tests pit against hybridkex.tls on loopback.
//
// Both ends are asynchronous, so the Python side can drive its own end in between:
//
//   tls.listen  {...}          -> {handle, port}   a server for one connection, listening
//   tls.connect {port, ...}    -> {handle}         a client, connecting in the background
//   tls.result  {handle}       -> what that end saw, once its connection has closed
//                                 (or the handshake's error, as this op's error)
//
// Options of both (byte strings base64, PEM as text):
//   key, cert (PEM; cert may hold the chain), ca (PEM: the trust anchors), groups
//   (OpenSSL group list, as ecdhCurve), ciphersuites (TLS 1.3 suites, OpenSSL names),
//   exporters ([{label, context?, length}]: RFC 8446 exporters taken after the
//   handshake; no context = none passed, which TLS 1.3 treats as the empty one).
// Server only: requestCert (demand and verify a client certificate), pskKeys
//   ({identity: key}: TLS 1.3 external PSKs through pskCallback; then no certificate
//   is needed).  The server echoes every byte it receives and ends when the client does.
// Client only: port, servername (checked against the server's certificate), psk
//   ({identity, key}), message (sent once the handshake is done; the client ends after
//   reading as many bytes back).
//
// The result: protocol, cipher (OpenSSL and IANA names), group (getEphemeralKeyInfo():
// client side only, Node reports nothing on a server socket), authorized and
// authorizationError, peerCertificate (the leaf's DER, or null), sessionReused,
// pskIdentity (the identity the server's pskCallback saw, or the client sent), the
// exporters in request order, and received (the server: every byte that arrived; the
// client: the echo).

import tls from 'node:tls';

import { b64, bytes } from './wire.mjs';

const HOST = '127.0.0.1';
const LIMIT_MS = 20000; // a connection that has not closed by then fails its result

const handles = new Map();
let nextHandle = 0;

function common(args) {
  const options = { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' };
  if (args.key !== undefined) options.key = args.key;
  if (args.cert !== undefined) options.cert = args.cert;
  if (args.ca !== undefined) options.ca = args.ca;
  if (args.groups !== undefined) options.ecdhCurve = args.groups;
  if (args.ciphersuites !== undefined) options.ciphersuites = args.ciphersuites;
  return options;
}

// What a socket negotiated, read right after its handshake.
function observe(socket, args, role) {
  const cipher = socket.getCipher();
  const peer = socket.getPeerX509Certificate();
  const key = role === 'client' ? socket.getEphemeralKeyInfo() : null;
  return {
    role,
    protocol: socket.getProtocol(),
    cipher: { name: cipher.name, standardName: cipher.standardName },
    group: key && key.name ? key.name : null,
    authorized: socket.authorized,
    authorizationError: socket.authorizationError ? String(socket.authorizationError) : null,
    peerCertificate: peer ? b64(peer.raw) : null,
    sessionReused: socket.isSessionReused(),
    exporters: (args.exporters ?? []).map(({ label, context, length }) => b64(
      context === undefined || context === null
        ? socket.exportKeyingMaterial(length, label)
        : socket.exportKeyingMaterial(length, label, bytes(context)))),
  };
}

// A handle whose result settles once; a rejection nobody has asked for yet must not
// count as unhandled (Node would exit).
function register(start) {
  nextHandle += 1;
  const handle = nextHandle;
  let settle;
  const result = new Promise((resolve, reject) => { settle = { resolve, reject }; });
  result.catch(() => {});
  const timer = setTimeout(() => {
    settle.reject(Object.assign(
      new Error(`no finished TLS connection within ${LIMIT_MS} ms`), { code: 'ETIMEDOUT' }));
    entry.cleanup();
  }, LIMIT_MS);
  const entry = {
    result,
    resolve: (value) => { clearTimeout(timer); settle.resolve(value); },
    reject: (err) => { clearTimeout(timer); settle.reject(err); },
    cleanup: () => {},
  };
  handles.set(handle, entry);
  start(entry);
  return handle;
}

function listen(args) {
  return new Promise((resolveListen, rejectListen) => {
    const handle = register((entry) => {
      let pskIdentity = null;
      const options = {
        ...common(args),
        requestCert: Boolean(args.requestCert),
        rejectUnauthorized: Boolean(args.requestCert),
      };
      if (args.pskKeys !== undefined) {
        options.pskCallback = (socket, identity) => {
          pskIdentity = identity;
          return Object.hasOwn(args.pskKeys, identity) ? bytes(args.pskKeys[identity]) : null;
        };
      }
      const server = tls.createServer(options);
      entry.cleanup = () => server.close();
      let accepted = false;
      server.on('secureConnection', (socket) => {
        if (accepted) { socket.destroy(); return; }
        accepted = true;
        let seen;
        try {
          seen = observe(socket, args, 'server');
        } catch (err) {
          socket.destroy();
          entry.reject(err);
          return;
        }
        seen.pskIdentity = pskIdentity;
        const received = [];
        socket.on('data', (chunk) => { received.push(chunk); socket.write(chunk); });
        socket.on('error', (err) => entry.reject(err));
        socket.on('close', () => {
          entry.resolve({ ...seen, received: b64(Buffer.concat(received)) });
          server.close();
        });
      });
      // With requestCert, Node.js verifies the client's chain after OpenSSL's handshake
      // and, if it fails, closes the socket without an alert; the reason is left on the
      // socket (authorizationError), not in the error.
      server.on('tlsClientError', (err, socket) => {
        if (socket?.authorizationError) {
          err.message += ` (the client certificate was refused: ${socket.authorizationError})`;
        }
        entry.reject(err);
        server.close();
      });
      server.on('error', (err) => { entry.reject(err); rejectListen(err); });
      server.listen(0, HOST, () => resolveListen({ handle, port: server.address().port }));
    });
  });
}

function connect(args) {
  const handle = register((entry) => {
    const message = args.message === undefined ? Buffer.alloc(0) : bytes(args.message);
    const options = { ...common(args), host: HOST, port: args.port };
    if (args.servername !== undefined) options.servername = args.servername;
    if (args.psk !== undefined) {
      options.pskCallback = () => ({ psk: bytes(args.psk.key), identity: args.psk.identity });
    }
    const socket = tls.connect(options);
    entry.cleanup = () => socket.destroy();
    let seen = null;
    const received = [];
    let length = 0;
    socket.on('secureConnect', () => {
      try {
        seen = observe(socket, args, 'client');
      } catch (err) {
        socket.destroy();
        entry.reject(err);
        return;
      }
      seen.pskIdentity = args.psk === undefined ? null : args.psk.identity;
      if (message.length === 0) socket.end(); else socket.write(message);
    });
    socket.on('data', (chunk) => {
      received.push(chunk);
      length += chunk.length;
      if (length >= message.length) socket.end();
    });
    socket.on('error', (err) => entry.reject(err));
    socket.on('close', () => {
      if (seen === null) {
        entry.reject(new Error('the connection closed before its TLS handshake completed'));
      } else {
        entry.resolve({ ...seen, received: b64(Buffer.concat(received)) });
      }
    });
  });
  return { handle };
}

export const ops = {
  'tls.listen': (args) => listen(args),
  'tls.connect': (args) => connect(args),
  'tls.result': async ({ handle }) => {
    const entry = handles.get(handle);
    if (entry === undefined) throw new Error(`unknown TLS handle ${JSON.stringify(handle)}`);
    try {
      return await entry.result;
    } finally {
      handles.delete(handle);
      entry.cleanup();
    }
  },
};
