// Physical replication slots on walstream serve (slot.c, slotfuncs.c, walsender.c
// CreateReplicationSlot/DropReplicationSlot/ReadReplicationSlot): a client streaming with a slot
// moves its restart_lsn with every flush position it reports, so the slots say which WAL the
// standbys behind walstream still need. Temporary slots live as long as the connection that made
// them; the others persist in a state file when one is given (written atomically), so that
// `walstream cleanup --keep-slots FILE` can keep what they still need.
import { readFileSync } from 'node:fs';
import { writeFileAtomic } from '../sink/fsutil.js';
import { formatLsn, parseLsn, type Lsn } from '../wal/lsn.js';

export interface Slot {
  name: string;
  temporary: boolean;
  /** The connection (backend pid) that created a temporary slot. */
  owner: number | undefined;
  /** The connection streaming with the slot now. */
  activePid: number | undefined;
  restartLsn: Lsn | undefined;
}

/** A slot error with the walsender's SQLSTATE and wording. */
export class SlotError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'SlotError';
  }
}

/** slot.c ReplicationSlotValidateName. */
export function validateSlotName(name: string): void {
  if (name.length === 0) throw new SlotError('42602', `replication slot name "${name}" is too short`);
  if (name.length > 63) throw new SlotError('42622', `replication slot name "${name}" is too long`);
  if (!/^[a-z0-9_]+$/.test(name)) {
    throw new SlotError('42602', `replication slot name "${name}" contains invalid character`, 'Replication slot names may only contain lower case letters, numbers, and the underscore character.');
  }
}

interface StateFile {
  format: 1;
  slots: { name: string; restart_lsn: string | null }[];
}

/** Read the persistent slots a state file holds (what cleanup --keep-slots reads). */
export function readSlotState(path: string): { name: string; restartLsn: Lsn | undefined }[] {
  const text = readFileSync(path, 'utf8');
  let parsed: StateFile;
  try {
    parsed = JSON.parse(text) as StateFile;
  } catch {
    throw new Error(`slot state file "${path}" is not valid JSON`);
  }
  if (parsed.format !== 1 || !Array.isArray(parsed.slots)) throw new Error(`slot state file "${path}" is not a walstream slot state file`);
  return parsed.slots.map((s) => {
    if (typeof s.name !== 'string') throw new Error(`slot state file "${path}" has a slot without a name`);
    return { name: s.name, restartLsn: s.restart_lsn === null ? undefined : parseLsn(s.restart_lsn) };
  });
}

export class SlotRegistry {
  private readonly slots = new Map<string, Slot>();
  private saving: Promise<void> = Promise.resolve();
  private dirty = false;

  /** `stateFile`: where persistent slots are kept across restarts (none: in memory only). */
  constructor(private readonly stateFile?: string) {
    if (stateFile) {
      let entries: { name: string; restartLsn: Lsn | undefined }[] = [];
      try {
        entries = readSlotState(stateFile);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      for (const e of entries) this.slots.set(e.name, { name: e.name, temporary: false, owner: undefined, activePid: undefined, restartLsn: e.restartLsn });
    }
  }

  get(name: string): Slot | undefined {
    return this.slots.get(name);
  }

  list(): Slot[] {
    return [...this.slots.values()];
  }

  async create(name: string, temporary: boolean, owner: number, restartLsn: Lsn | undefined): Promise<Slot> {
    validateSlotName(name);
    if (this.slots.has(name)) throw new SlotError('42710', `replication slot "${name}" already exists`);
    const slot: Slot = { name, temporary, owner: temporary ? owner : undefined, activePid: undefined, restartLsn };
    this.slots.set(name, slot);
    if (!temporary) await this.save();
    return slot;
  }

  /** Drop a slot; an active one is an error unless `wait` (then wait until it is released). */
  async drop(name: string, wait: boolean, byPid: number): Promise<void> {
    for (;;) {
      const slot = this.slots.get(name);
      if (!slot) throw new SlotError('42704', `replication slot "${name}" does not exist`);
      if (slot.activePid === undefined || slot.activePid === byPid) {
        this.slots.delete(name);
        if (!slot.temporary) await this.save();
        return;
      }
      if (!wait) throw new SlotError('55006', `replication slot "${name}" is active for PID ${slot.activePid}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Start streaming with a slot (walsender.c StartReplication's ReplicationSlotAcquire). */
  acquire(name: string, pid: number): Slot {
    const slot = this.slots.get(name);
    if (!slot) throw new SlotError('42704', `replication slot "${name}" does not exist`);
    if (slot.activePid !== undefined && slot.activePid !== pid) throw new SlotError('55006', `replication slot "${name}" is active for PID ${slot.activePid}`);
    slot.activePid = pid;
    return slot;
  }

  release(name: string, pid: number): void {
    const slot = this.slots.get(name);
    if (slot?.activePid === pid) slot.activePid = undefined;
  }

  /** A flush position reported by the client streaming with the slot (PhysicalConfirmReceivedLocation: no monotonic check). */
  confirm(name: string, flush: Lsn): void {
    const slot = this.slots.get(name);
    if (!slot || flush === 0n || slot.restartLsn === flush) return;
    slot.restartLsn = flush;
    if (!slot.temporary) this.markDirty();
  }

  /** The connection ended: its temporary slots go, the slot it used is released. */
  connectionEnded(pid: number): void {
    for (const [name, slot] of this.slots) {
      if (slot.activePid === pid) slot.activePid = undefined;
      if (slot.temporary && slot.owner === pid) this.slots.delete(name);
    }
  }

  /** Persist soon (coalesced: at most one write a second while positions move). */
  private markDirty(): void {
    if (!this.stateFile || this.dirty) return;
    this.dirty = true;
    setTimeout(() => {
      this.dirty = false;
      void this.save().catch(() => undefined);
    }, 1000).unref();
  }

  /** Write the persistent slots to the state file (atomically, durably). */
  save(): Promise<void> {
    if (!this.stateFile) return Promise.resolve();
    const file = this.stateFile;
    const state: StateFile = {
      format: 1,
      slots: this.list()
        .filter((s) => !s.temporary)
        .map((s) => ({ name: s.name, restart_lsn: s.restartLsn === undefined ? null : formatLsn(s.restartLsn) })),
    };
    this.saving = this.saving.then(() => writeFileAtomic(file, Buffer.from(`${JSON.stringify(state, null, 1)}\n`), false));
    return this.saving;
  }
}
