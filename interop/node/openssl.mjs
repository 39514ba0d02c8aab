// OpenSSL 3.5 through Node's crypto module: ML-KEM (FIPS 203), ML-DSA (FIPS 204),
// X25519 (RFC 7748), and the TLS hybrid X25519MLKEM768 assembled here from the first
// and the last, in draft-ietf-tls-ecdhe-mlkem's layout, independently of hybridkex.

import crypto from 'node:crypto';

import { bytes, b64 } from './wire.mjs';

const MLKEM = { 'ML-KEM-768': 'ml-kem-768', 'ML-KEM-1024': 'ml-kem-1024' };
const MLDSA = { 'ML-DSA-44': 'ml-dsa-44', 'ML-DSA-65': 'ml-dsa-65', 'ML-DSA-87': 'ml-dsa-87' };

function keyType(table, alg) {
  if (!Object.hasOwn(table, alg)) throw new Error(`unsupported algorithm ${JSON.stringify(alg)}`);
  return table[alg];
}

// Private keys are always the FIPS seed: ML-KEM d || z (64 bytes), ML-DSA xi (32 bytes).
function seedKey(table, alg, seed) {
  return crypto.createPrivateKey({
    key: bytes(seed), format: 'raw-seed', asymmetricKeyType: keyType(table, alg),
  });
}

function publicKey(type, raw) {
  return crypto.createPublicKey({ key: raw, format: 'raw-public', asymmetricKeyType: type });
}

function rawPublic(privateKey) {
  return crypto.createPublicKey(privateKey).export({ format: 'raw-public' });
}

// A fresh key pair made by OpenSSL, or the one determined by `seed` when given.
function keygen(table, alg, seed) {
  const privateKey = seed === undefined
    ? crypto.generateKeyPairSync(keyType(table, alg)).privateKey
    : seedKey(table, alg, seed);
  return { public: b64(rawPublic(privateKey)), seed: b64(privateKey.export({ format: 'raw-seed' })) };
}

// --- X25519 ----------------------------------------------------------------------------

function x25519Private(scalar) {
  return scalar === undefined
    ? crypto.generateKeyPairSync('x25519').privateKey
    : crypto.createPrivateKey({ key: scalar, format: 'raw-private', asymmetricKeyType: 'x25519' });
}

function x25519(privateKey, peerPublic) {
  return crypto.diffieHellman({ privateKey, publicKey: publicKey('x25519', peerPublic) });
}

// --- X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem, TLS group 0x11EC) -----------------------
// client share = ML-KEM-768 ek (1184) || X25519 public (32)
// server share = ML-KEM-768 ciphertext (1088) || X25519 public (32)
// shared secret = ML-KEM-768 secret (32) || X25519 secret (32)
// The private key here is the ML-KEM seed d || z (64) followed by the X25519 scalar (32).

const EK = 1184;
const CT = 1088;

function need(buffer, length, what) {
  if (buffer.length !== length) {
    throw new Error(`X25519MLKEM768 ${what} must be ${length} bytes, got ${buffer.length}`);
  }
}

export const ops = {
  'openssl.versions': () => ({ node: process.version, openssl: process.versions.openssl }),

  'openssl.mlkem.keygen': ({ alg, seed }) => keygen(MLKEM, alg, seed),
  'openssl.mlkem.encaps': ({ alg, public: ek }) => {
    const { sharedKey, ciphertext } = crypto.encapsulate(publicKey(keyType(MLKEM, alg), bytes(ek)));
    return { secret: b64(sharedKey), ciphertext: b64(ciphertext) };
  },
  'openssl.mlkem.decaps': ({ alg, seed, ciphertext }) => (
    { secret: b64(crypto.decapsulate(seedKey(MLKEM, alg, seed), bytes(ciphertext))) }),

  'openssl.mldsa.keygen': ({ alg, seed }) => keygen(MLDSA, alg, seed),
  'openssl.mldsa.sign': ({ alg, seed, message, context }) => ({
    signature: b64(crypto.sign(null, bytes(message),
      { key: seedKey(MLDSA, alg, seed), context: bytes(context) })),
  }),
  'openssl.mldsa.verify': ({ alg, public: pk, message, signature, context }) => ({
    valid: crypto.verify(null, bytes(message),
      { key: publicKey(keyType(MLDSA, alg), bytes(pk)), context: bytes(context) },
      bytes(signature)),
  }),

  'openssl.x25519.keygen': ({ scalar }) => {
    const privateKey = x25519Private(scalar === undefined ? undefined : bytes(scalar));
    return {
      public: b64(rawPublic(privateKey)),
      scalar: b64(privateKey.export({ format: 'raw-private' })),
    };
  },
  'openssl.x25519.derive': ({ scalar, public: peer }) => (
    { secret: b64(x25519(x25519Private(bytes(scalar)), bytes(peer))) }),
  // X25519 as a KEM, as HKX/1 and the TLS hybrid use it: a fresh ephemeral key, whose
  // public value is the "ciphertext", and the raw Diffie-Hellman output as the secret.
  'openssl.x25519.encaps': ({ public: peer }) => {
    const ephemeral = x25519Private(undefined);
    return { secret: b64(x25519(ephemeral, bytes(peer))), ciphertext: b64(rawPublic(ephemeral)) };
  },

  'openssl.x25519mlkem768.keygen': ({ private: given }) => {
    const key = given === undefined ? undefined : bytes(given);
    if (key !== undefined) need(key, 96, 'private key');
    const mlkem = key === undefined
      ? crypto.generateKeyPairSync('ml-kem-768').privateKey
      : seedKey(MLKEM, 'ML-KEM-768', key.subarray(0, 64));
    const ecdh = x25519Private(key?.subarray(64));
    return {
      public: b64(Buffer.concat([rawPublic(mlkem), rawPublic(ecdh)])),
      private: b64(Buffer.concat([mlkem.export({ format: 'raw-seed' }),
        ecdh.export({ format: 'raw-private' })])),
    };
  },
  // The server's side: encapsulate to the ML-KEM half, answer the X25519 half.
  'openssl.x25519mlkem768.encaps': ({ public: share }) => {
    const clientShare = bytes(share);
    need(clientShare, EK + 32, 'client share');
    const { sharedKey, ciphertext } = crypto.encapsulate(
      publicKey('ml-kem-768', clientShare.subarray(0, EK)));
    const ephemeral = x25519Private(undefined);
    const ecdhSecret = x25519(ephemeral, clientShare.subarray(EK));
    return {
      ciphertext: b64(Buffer.concat([ciphertext, rawPublic(ephemeral)])),
      secret: b64(Buffer.concat([sharedKey, ecdhSecret])),
    };
  },
  // The client's side: decapsulate the ML-KEM half, X25519 with the server's public value.
  'openssl.x25519mlkem768.decaps': ({ private: given, ciphertext }) => {
    const key = bytes(given);
    const serverShare = bytes(ciphertext);
    need(key, 96, 'private key');
    need(serverShare, CT + 32, 'server share');
    const mlkemSecret = crypto.decapsulate(seedKey(MLKEM, 'ML-KEM-768', key.subarray(0, 64)),
      serverShare.subarray(0, CT));
    const ecdhSecret = x25519(x25519Private(key.subarray(64)), serverShare.subarray(CT));
    return { secret: b64(Buffer.concat([mlkemSecret, ecdhSecret])) };
  },
};
