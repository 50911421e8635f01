/**
 * The shared state of the runs: one poller of `GET runs` for the sidebar and the status bar, the commands sent from
 * this page and their acknowledgement.
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';
import { AckTracker } from './acks';
import { ApiError, ControlCommand, IRun, RunsApi } from './api';
import { POLL_BACKGROUND_MS, POLL_VISIBLE_MS } from './constants';
import { formatLr } from './lr';

/** "lr=1e-5", "lr=2e-5, weight_decay=0.01": what a `set` command changes, as its acknowledgement shows it. */
export function setLabel(args: { [key: string]: number }): string {
  return Object.entries(args)
    .map(([k, v]) => `${k}=${Number.isInteger(v) ? String(v) : formatLr(v)}`)
    .join(', ');
}

export class RunsModel {
  readonly acks = new AckTracker();
  private _runs: IRun[] = [];
  private _error = '';
  private _errors = new Map<string, string>();
  private _changed = new Signal<this, void>(this);
  private _poll: Poll;
  private _consumers = new Set<string>();
  private _visible = new Set<string>();
  private _loaded = false;

  constructor(readonly api: RunsApi) {
    this._poll = new Poll({
      auto: false,
      factory: () => this.refresh(),
      frequency: { interval: POLL_BACKGROUND_MS, backoff: false },
      name: 'nb-finetune:runs',
      standby: 'when-hidden'
    });
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get runs(): ReadonlyArray<IRun> {
    return this._runs;
  }

  /** Whether a first answer (or error) arrived. */
  get loaded(): boolean {
    return this._loaded;
  }

  /** The last listing error ("" after a successful poll). */
  get error(): string {
    return this._error;
  }

  /** The last error of an action on one run ("" when none). */
  runError(id: string): string {
    return this._errors.get(id) ?? '';
  }

  /**
   * Registers a consumer of the data; `visible` consumers (the open sidebar) get the fast interval. The poll runs
   * only while there is at least one consumer.
   */
  setConsumer(name: string, wanted: boolean, visible = false): void {
    if (wanted) {
      this._consumers.add(name);
    } else {
      this._consumers.delete(name);
    }
    if (wanted && visible) {
      this._visible.add(name);
    } else {
      this._visible.delete(name);
    }
    const interval = this._visible.size ? POLL_VISIBLE_MS : POLL_BACKGROUND_MS;
    if (this._poll.isDisposed) {
      return;
    }
    this._poll.frequency = { interval, backoff: false, max: POLL_BACKGROUND_MS * 6 };
    if (this._consumers.size === 0) {
      void this._poll.stop();
    } else if (!this._poll.isDisposed) {
      void this._poll.start();
      if (visible) {
        void this._poll.refresh();
      }
    }
  }

  /** Fetches the run list now (errors are kept in `error`, never thrown, so the poll keeps going). */
  async refresh(): Promise<void> {
    try {
      const answer = await this.api.listRuns();
      this._runs = Array.isArray(answer.runs) ? answer.runs : [];
      this._error = '';
      this.acks.update(this._runs);
    } catch (err) {
      this._error = err instanceof ApiError ? err.message : String(err);
    }
    this._loaded = true;
    this._changed.emit();
  }

  /** Sends a control command; errors are shown next to the run. */
  async control(run: IRun, cmd: ControlCommand, args: { [key: string]: number } = {}): Promise<void> {
    this._errors.delete(run.id);
    try {
      const reply = await this.api.control(run.id, cmd, args);
      this.acks.sent(run.id, cmd === 'set' ? `set ${setLabel(args)}` : cmd, reply.seq);
    } catch (err) {
      this._errors.set(run.id, `${cmd}: ${err instanceof Error ? err.message : String(err)}`);
    }
    this._changed.emit();
    void this._poll.refresh();
  }

  /** Sends stop to the runs `ids` of this server's kernels (what the user confirmed); returns the ids stopped. */
  async stopAll(ids: string[]): Promise<string[]> {
    const reply = await this.api.stopAll({ scope: 'server', ids });
    void this._poll.refresh();
    return reply.stopped ?? [];
  }

  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }
}
