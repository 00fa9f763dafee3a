// BASE_BACKUP's command text in both grammars, its typed CopyData messages, and the session's
// reading of the answer (session/basebackup.ts) from a scripted server: archives in order, the
// manifest, the end position, the socket paused while the consumer is behind, and server errors.
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { baseBackupCommand, parseNewArchive, parseProgress, parseTablespaceRow, quoteReplString } from '../../src/protocol/basebackup.js';
import { BackupFramer, BaseBackupRun } from '../../src/session/basebackup.js';

const opts = { label: "it's", progress: true, fastCheckpoint: true, maxRateKb: 1024, wait: false };

describe('BASE_BACKUP command', () => {
  it('uses the option list of 15+ and the keywords before', () => {
    expect(baseBackupCommand(opts, 150004)).toBe("BASE_BACKUP (LABEL 'it''s', PROGRESS, CHECKPOINT 'fast', WAIT 0, MAX_RATE 1024, TABLESPACE_MAP, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C')");
    expect(baseBackupCommand(opts, 140010)).toBe("BASE_BACKUP LABEL 'it''s' PROGRESS FAST NOWAIT MAX_RATE 1024 TABLESPACE_MAP MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'");
    expect(baseBackupCommand({ label: 'x', progress: false, fastCheckpoint: false, wait: true }, 170000)).toBe("BASE_BACKUP (LABEL 'x', TABLESPACE_MAP, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C')");
  });
  it('refuses what the server would refuse', () => {
    expect(() => baseBackupCommand(opts, 120000)).toThrow(/13 or newer/);
    expect(() => baseBackupCommand({ ...opts, maxRateKb: 31 }, 150000)).toThrow(/out of range/);
    expect(() => quoteReplString('a\0b')).toThrow(/NUL/);
  });
  it('parses the typed messages and the tablespace rows', () => {
    expect(parseNewArchive(Buffer.from('nbase.tar\0\0'))).toEqual({ name: 'base.tar', location: '' });
    expect(parseNewArchive(Buffer.from('n16384.tar\0/srv/ts\0'))).toEqual({ name: '16384.tar', location: '/srv/ts' });
    expect(() => parseNewArchive(Buffer.from('n../x\0\0'))).toThrow();
    expect(() => parseNewArchive(Buffer.from('nbase.tar\0'))).toThrow();
    const p = Buffer.alloc(9);
    p[0] = 0x70;
    p.writeBigInt64BE(123456n, 1);
    expect(parseProgress(p)).toBe(123456n);
    expect(parseTablespaceRow({ spcoid: null, spclocation: null, size: '42' })).toEqual({ oid: undefined, location: undefined, sizeKb: 42 });
    expect(parseTablespaceRow({ spcoid: '16384', spclocation: '/srv/ts', size: null })).toEqual({ oid: 16384, location: '/srv/ts', sizeKb: undefined });
  });
});

function msg(type: string, body: Buffer): Buffer {
  const h = Buffer.alloc(5);
  h[0] = type.charCodeAt(0);
  h.writeUInt32BE(body.length + 4, 1);
  return Buffer.concat([h, body]);
}
const copyData = (b: Buffer): Buffer => msg('d', b);
const typed = (t: string, b: Buffer = Buffer.alloc(0)): Buffer => copyData(Buffer.concat([Buffer.from(t), b]));

describe('BackupFramer', () => {
  it('hands on the same messages and bytes however the stream is cut', () => {
    const data1 = Buffer.alloc(3000, 1);
    const data2 = Buffer.alloc(10, 2);
    const stream = Buffer.concat([
      msg('C', Buffer.from('SELECT\0')),
      typed('n', Buffer.from('base.tar\0\0')),
      typed('d', data1),
      typed('p', Buffer.alloc(8)),
      typed('m'),
      typed('d', data2),
      msg('c', Buffer.alloc(0)),
    ]);
    for (let cut = 1; cut < stream.length; cut += 7) {
      const got: string[] = [];
      const bytes: Buffer[] = [];
      const f = new BackupFramer(true, {
        data: (p) => bytes.push(Buffer.from(p)),
        copyMessage: (p) => got.push(String.fromCharCode(p[0]!)),
        other: (m) => got.push(`<${String.fromCharCode(m[0]!)}>`),
      });
      for (let i = 0; i < stream.length; i += cut) f.push(stream.subarray(i, i + cut));
      expect(got).toEqual(['<C>', 'n', 'p', 'm', '<c>']);
      expect(Buffer.concat(bytes).equals(Buffer.concat([data1, data2]))).toBe(true);
    }
  });
});

/** A pg connection whose socket the test writes into. */
class FakeStream extends EventEmitter {
  paused = false;
  pauses = 0;
  destroyed = false;
  pause(): void {
    this.paused = true;
    this.pauses++;
  }
  resume(): void {
    this.paused = false;
  }
  destroy(): void {
    this.destroyed = true;
  }
}

function submitted(run: BaseBackupRun): { stream: FakeStream; sent: string[]; server: (b: Buffer) => void } {
  const stream = new FakeStream();
  const sent: string[] = [];
  // pg's own listener: the messages the framer hands back go to the run's pg-side handlers here.
  stream.on('data', () => undefined);
  run.submit({ query: (t: string) => sent.push(t), stream } as never);
  return { stream, sent, server: (b) => stream.emit('data', b) };
}

describe('BaseBackupRun', () => {
  const startRows = (run: BaseBackupRun, tablespaces: { spcoid: string | null; spclocation: string | null; size: string | null }[]): void => {
    run.handleRowDescription({ fields: [{ name: 'recptr' }, { name: 'tli' }] });
    run.handleDataRow({ fields: ['0/2000028', '1'] });
    run.handleCommandComplete();
    run.handleRowDescription({ fields: [{ name: 'spcoid' }, { name: 'spclocation' }, { name: 'size' }] });
    for (const t of tablespaces) run.handleDataRow({ fields: [t.spcoid, t.spclocation, t.size] });
    run.handleCommandComplete();
  };
  const endRows = (run: BaseBackupRun): void => {
    run.handleRowDescription({ fields: [{ name: 'recptr' }, { name: 'tli' }] });
    run.handleDataRow({ fields: ['0/2000100', '1'] });
    run.handleCommandComplete();
    run.handleReadyForQuery();
  };

  it('15+: archives in order, the manifest, the end; the socket paused while the consumer is behind', async () => {
    const progress: number[] = [];
    const run = new BaseBackupRun('BASE_BACKUP (LABEL x)', true, { onProgress: (d) => progress.push(d) }, 64 * 1024);
    const { stream, server } = submitted(run);
    startRows(run, [
      { spcoid: '16384', spclocation: '/srv/ts', size: '1' },
      { spcoid: null, spclocation: null, size: '2' },
    ]);
    const start = await run.start;
    expect(start).toMatchObject({ lsn: 0x2000028n, timeline: 1 });
    server(msg('H', Buffer.from([0, 0, 0])));
    server(typed('n', Buffer.from('16384.tar\0/srv/ts\0')));
    for (let i = 0; i < 40; i++) server(typed('d', Buffer.alloc(4096, i)));
    expect(stream.paused).toBe(true);
    const ts = await run.nextArchive();
    expect(ts).toMatchObject({ name: '16384.tar', oid: 16384, location: '/srv/ts' });
    let n = 0;
    const reading = (async () => {
      for await (const b of ts!.data) n += b.length;
    })();
    await new Promise((r) => setTimeout(r, 10));
    expect(stream.paused).toBe(false);
    const p = Buffer.alloc(8);
    p.writeBigInt64BE(163840n);
    server(typed('p', p));
    server(typed('n', Buffer.from('base.tar\0\0')));
    await reading;
    expect(n).toBe(40 * 4096);
    expect(progress).toEqual([163840]);
    const base = await run.nextArchive();
    expect(base).toMatchObject({ name: 'base.tar', oid: undefined, location: undefined });
    server(typed('d', Buffer.from('basedata')));
    server(typed('m'));
    server(typed('d', Buffer.from('{"manifest"}')));
    server(msg('c', Buffer.alloc(0)));
    const chunks: Buffer[] = [];
    for await (const b of base!.data) chunks.push(Buffer.from(b));
    expect(Buffer.concat(chunks).toString()).toBe('basedata');
    expect(await run.nextArchive()).toBeUndefined();
    endRows(run);
    expect((await run.manifest())?.toString()).toBe('{"manifest"}');
    expect(await run.end).toEqual({ lsn: 0x2000100n, timeline: 1 });
  });

  it('14: one COPY per tablespace, each ended with the two zero blocks, then the manifest', async () => {
    const run = new BaseBackupRun('BASE_BACKUP LABEL x', false);
    const { server } = submitted(run);
    startRows(run, [
      { spcoid: '16385', spclocation: '/ts', size: null },
      { spcoid: null, spclocation: null, size: null },
    ]);
    await run.start;
    for (const body of ['ts', 'base', 'manifest']) {
      server(msg('H', Buffer.from([0, 0, 0])));
      server(copyData(Buffer.from(body)));
      server(msg('c', Buffer.alloc(0)));
    }
    endRows(run);
    const names: string[] = [];
    const sizes: number[] = [];
    for (let a = await run.nextArchive(); a; a = await run.nextArchive()) {
      names.push(a.name);
      let n = 0;
      for await (const b of a.data) n += b.length;
      sizes.push(n);
    }
    expect(names).toEqual(['16385.tar', 'base.tar']);
    expect(sizes).toEqual([2 + 1024, 4 + 1024]);
    expect((await run.manifest())?.toString()).toBe('manifest');
  });

  it('a server error fails every pending read, keeping its SQLSTATE', async () => {
    const run = new BaseBackupRun('BASE_BACKUP (LABEL x)', true);
    submitted(run);
    const pending = run.start;
    run.handleError(Object.assign(new Error('could not find any WAL files'), { code: 'XX000' }));
    await expect(pending).rejects.toThrow(/could not find any WAL files/);
    await expect(run.nextArchive()).rejects.toMatchObject({ code: 'XX000' });
    await expect(run.end).rejects.toThrow();
  });
});
