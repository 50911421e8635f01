/**
 * Tracks the control commands this page sent until the engine acknowledges them (the run's `status.json`
 * `last_command` reaches the command's `seq`). Pure logic, no DOM; the clock is injectable for the tests.
 */
import type { IRun } from './api';
import { isActive } from './format';

export type AckState = 'sent' | 'acknowledged' | 'lost';

export interface ISentCommand {
  runId: string;
  cmd: string;
  seq: number;
  sentAt: number;
  state: AckState;
  settledAt?: number;
}

export class AckTracker {
  /** How long an acknowledged (or lost) command stays visible, in ms. */
  static readonly KEEP_MS = 15000;

  private _byRun = new Map<string, ISentCommand>();

  constructor(private readonly now: () => number = () => Date.now()) {}

  /** Records a command the server accepted with sequence number `seq` (the newest one per run is shown). */
  sent(runId: string, cmd: string, seq: number): ISentCommand {
    const entry: ISentCommand = { runId, cmd, seq, sentAt: this.now(), state: 'sent' };
    this._byRun.set(runId, entry);
    return entry;
  }

  /**
   * Updates from a fresh run list. A command is acknowledged once `last_command >= seq`; a command whose run
   * stopped being active (or vanished from the list) before acknowledging it is "lost". Returns whether anything
   * changed.
   */
  update(runs: ReadonlyArray<IRun>): boolean {
    const byId = new Map(runs.map(r => [r.id, r]));
    const t = this.now();
    let changed = false;
    for (const [id, entry] of this._byRun) {
      if (entry.state !== 'sent') {
        if (t - (entry.settledAt ?? t) > AckTracker.KEEP_MS) {
          this._byRun.delete(id);
          changed = true;
        }
        continue;
      }
      const run = byId.get(id);
      if (run && (run.last_command ?? 0) >= entry.seq) {
        entry.state = 'acknowledged';
        entry.settledAt = t;
        changed = true;
      } else if (!run || !isActive(run)) {
        entry.state = 'lost';
        entry.settledAt = t;
        changed = true;
      }
    }
    return changed;
  }

  get(runId: string): ISentCommand | undefined {
    return this._byRun.get(runId);
  }

  /** "sent #3", "stop acknowledged (#3)", "pause not acknowledged: the run ended" or "". */
  label(runId: string): string {
    const e = this._byRun.get(runId);
    if (!e) {
      return '';
    }
    switch (e.state) {
      case 'sent':
        return `${e.cmd} sent #${e.seq}`;
      case 'acknowledged':
        return `${e.cmd} acknowledged (#${e.seq})`;
      default:
        return `${e.cmd} #${e.seq} not acknowledged: the run ended`;
    }
  }
}
