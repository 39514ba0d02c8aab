// Byte strings on the JSON-lines wire: base64 in both directions.

export function bytes(value) {
  if (Buffer.isBuffer(value)) return value;
  if (typeof value !== 'string') throw new TypeError('expected a base64 string');
  return Buffer.from(value, 'base64');
}

export function b64(buffer) {
  return Buffer.from(buffer).toString('base64');
}
