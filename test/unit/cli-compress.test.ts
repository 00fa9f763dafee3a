import { describe, it, expect } from 'vitest';
import { InvalidArgumentError } from 'commander';
import { parseCompress } from '../../src/cli/options.js';

describe('parseCompress (-Z/--compress)', () => {
  it.each<[string, { method: string; level?: number }]>([
    ['0', { method: 'none' }],
    ['5', { method: 'gzip', level: 5 }],
    ['1', { method: 'gzip', level: 1 }],
    ['9', { method: 'gzip', level: 9 }],
    ['none', { method: 'none' }],
    ['gzip', { method: 'gzip' }],
    ['gzip:9', { method: 'gzip', level: 9 }],
    ['gzip:1', { method: 'gzip', level: 1 }],
    ['gzip:level=4', { method: 'gzip', level: 4 }],
    ['GZIP:6', { method: 'gzip', level: 6 }],
    ['zstd', { method: 'zstd' }],
    ['zstd:3', { method: 'zstd', level: 3 }],
    ['zstd:22', { method: 'zstd', level: 22 }],
  ])('%j', (text, spec) => {
    const got = parseCompress(text);
    expect(got.method).toBe(spec.method);
    expect(got.level).toBe(spec.level);
  });

  it.each(['lz5', 'lz4', 'gzip:10', 'gzip:0', 'zstd:0', 'zstd:23', '10', '', 'gzip:', 'gzip:x', 'gzip:-1', 'gzip,5'])('rejects %j', (text) => {
    expect(() => parseCompress(text)).toThrow(InvalidArgumentError);
  });

  it('rejects a level for "none"', () => {
    expect(() => parseCompress('none:1')).toThrow(InvalidArgumentError);
  });
});
