// Open Quantum Safe's liboqs compiled to WebAssembly (npm @oqs/liboqs-js): ML-KEM and
// ML-DSA through the package's own API.  It makes key pairs only at random and its
// private keys are the expanded FIPS 203 / FIPS 204 encodings (no seeds); it signs
// with the empty context only.  `liboqs.exports` lists what the WebAssembly build
// exports and `liboqs.methods` the package's API, so the tests check those
// limitations instead of assuming them.

import { readFile } from 'node:fs/promises';

import {
  createMLDSA44, createMLDSA65, createMLDSA87, createMLKEM1024, createMLKEM768,
} from '@oqs/liboqs-js';

import { bytes, b64 } from './wire.mjs';

// liboqs-js accepts only plain Uint8Arrays (it checks constructor.name), not Buffers.
function u8(value) {
  return new Uint8Array(bytes(value));
}

const FACTORIES = {
  'ML-KEM-768': createMLKEM768,
  'ML-KEM-1024': createMLKEM1024,
  'ML-DSA-44': createMLDSA44,
  'ML-DSA-65': createMLDSA65,
  'ML-DSA-87': createMLDSA87,
};

const instances = new Map();

// One instance per algorithm for the life of the process (loading the module is the
// expensive part; the operations themselves are stateless).
function instance(alg) {
  if (!Object.hasOwn(FACTORIES, alg)) {
    throw new Error(`unsupported algorithm ${JSON.stringify(alg)}`);
  }
  if (!instances.has(alg)) instances.set(alg, FACTORIES[alg]());
  return instances.get(alg);
}

const PACKAGE_ROOT = new URL('../', import.meta.resolve('@oqs/liboqs-js'));

function keyPair({ publicKey, secretKey }) {
  return { public: b64(publicKey), secret: b64(secretKey) };
}

export const ops = {
  'liboqs.version': async () => {
    const pkg = JSON.parse(await readFile(new URL('package.json', PACKAGE_ROOT), 'utf8'));
    return { name: pkg.name, version: pkg.version };
  },
  // The liboqs C functions the algorithm's WebAssembly module exports.
  'liboqs.exports': async ({ alg }) => {
    if (!Object.hasOwn(FACTORIES, alg)) throw new Error(`unsupported algorithm ${alg}`);
    const file = new URL(`dist/${alg.toLowerCase()}.min.js`, PACKAGE_ROOT);
    const factory = (await import(file.href)).default;
    const module = await factory();
    return { functions: Object.keys(module).filter((name) => name.startsWith('_OQS_')).sort() };
  },

  // The methods of the package's algorithm object, with their declared arities.
  'liboqs.methods': async ({ alg }) => {
    const prototype = Object.getPrototypeOf(await instance(alg));
    const methods = {};
    for (const name of Object.getOwnPropertyNames(prototype)) {
      const value = Object.getOwnPropertyDescriptor(prototype, name).value;
      if (typeof value === 'function' && name !== 'constructor') methods[name] = value.length;
    }
    return { methods };
  },

  'liboqs.kem.keygen': async ({ alg }) => keyPair((await instance(alg)).generateKeyPair()),
  'liboqs.kem.encaps': async ({ alg, public: pk }) => {
    const { ciphertext, sharedSecret } = (await instance(alg)).encapsulate(u8(pk));
    return { ciphertext: b64(ciphertext), secret: b64(sharedSecret) };
  },
  'liboqs.kem.decaps': async ({ alg, secret, ciphertext }) => (
    { secret: b64((await instance(alg)).decapsulate(u8(ciphertext), u8(secret))) }),

  'liboqs.sig.keygen': async ({ alg }) => keyPair((await instance(alg)).generateKeyPair()),
  'liboqs.sig.sign': async ({ alg, secret, message }) => (
    { signature: b64((await instance(alg)).sign(u8(message), u8(secret))) }),
  'liboqs.sig.verify': async ({ alg, public: pk, message, signature }) => (
    { valid: (await instance(alg)).verify(u8(message), u8(signature), u8(pk)) }),
};
