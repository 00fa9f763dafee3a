// Re-cutting a byte stream into pieces of one size (encryption chunks, upload parts, blocks),
// holding at most one piece: what bounds the memory of a streamed object.

/** Bytes from `src` in pieces of exactly `size` (the last one shorter; none for an empty source). */
export async function* rechunk(src: AsyncIterable<Buffer>, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let held = 0;
  for await (const b of src) {
    let rest = b;
    while (held + rest.length >= size) {
      const take = size - held;
      parts.push(rest.subarray(0, take));
      yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
      rest = rest.subarray(take);
      parts = [];
      held = 0;
    }
    if (rest.length > 0) {
      parts.push(Buffer.from(rest)); // the source may reuse its buffer
      held += rest.length;
    }
  }
  if (held > 0) yield Buffer.concat(parts, held);
}
