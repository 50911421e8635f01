/** Pure formatting helpers of the sidebar and the status bar (unit-tested). */
import type { IRun } from './api';

/** States in which a run's process is expected to be working. */
const LIVE_STATES = new Set(['queued', 'starting', 'training', 'paused', 'stopping']);

/** The state to show: a run whose process is gone while its status still says it works is dead, not training. */
export function effectiveState(run: Pick<IRun, 'state' | 'alive'>): string {
  if (run.state === 'dead') {
    return 'dead';
  }
  if (LIVE_STATES.has(run.state) && run.alive === false) {
    return 'dead';
  }
  return run.state || 'unknown';
}

export interface IBadge {
  label: string;
  /** CSS modifier: one of running, paused, done, stopped, failed, dead, pending. */
  kind: string;
  title: string;
}

const BADGES: { [state: string]: [string, string] } = {
  queued: ['queued', 'pending'],
  starting: ['starting', 'pending'],
  training: ['training', 'running'],
  paused: ['paused', 'paused'],
  stopping: ['stopping', 'pending'],
  finished: ['finished', 'done'],
  stopped: ['stopped', 'stopped'],
  failed: ['failed', 'failed'],
  dead: ['dead', 'dead']
};

export function stateBadge(run: Pick<IRun, 'state' | 'alive' | 'reason' | 'heartbeat_age_s'>): IBadge {
  const state = effectiveState(run);
  const [label, kind] = BADGES[state] ?? [state, 'pending'];
  let title = label;
  if (state === 'dead') {
    const age = run.heartbeat_age_s;
    title =
      typeof age === 'number' && isFinite(age)
        ? `process gone; last heartbeat ${formatDuration(age)} ago`
        : 'process gone; no recent heartbeat';
  } else if (run.reason) {
    title = `${label}: ${run.reason}`;
  }
  return { label, kind, title };
}

/** Whether a run counts as active (for the status bar and "Stop all"). */
export function isActive(run: Pick<IRun, 'state' | 'alive'>): boolean {
  const state = effectiveState(run);
  return state === 'training' || state === 'paused' || state === 'starting' || state === 'queued' || state === 'stopping';
}

/** 0 -> "0s", 75 -> "1m 15s", 3725 -> "1h 02m", 90000 -> "1d 01h". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s}s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  }
  return `${Math.floor(s / 86400)}d ${String(Math.floor((s % 86400) / 3600)).padStart(2, '0')}h`;
}

/** The ETA text: "" when unknown (null, negative, not finite). */
export function formatEta(eta: number | null | undefined): string {
  if (typeof eta !== 'number' || !isFinite(eta) || eta < 0) {
    return '';
  }
  return formatDuration(eta);
}

/** "120 / 1,000" or "120" without a known total. */
export function formatStep(step: number | null | undefined, total: number | null | undefined): string {
  const s = (step ?? 0).toLocaleString('en-US');
  return typeof total === 'number' && total > 0 ? `${s} / ${total.toLocaleString('en-US')}` : s;
}

/** Progress in [0, 1], or null without a known total. */
export function progressFraction(step: number | null | undefined, total: number | null | undefined): number | null {
  if (typeof total !== 'number' || !(total > 0)) {
    return null;
  }
  return Math.min(1, Math.max(0, (step ?? 0) / total));
}

/** A number with 4 significant digits, scientific notation for very small or large values. */
export function formatNumber(value: number | null | undefined): string {
  if (typeof value !== 'number' || !isFinite(value)) {
    return '–';
  }
  const a = Math.abs(value);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) {
    return value.toExponential(2);
  }
  return String(Number(value.toPrecision(4)));
}

export function formatMetric(best: IRun['best_metric']): string {
  if (!best || typeof best.value !== 'number') {
    return '';
  }
  return `${best.name} ${formatNumber(best.value)}`;
}

/**
 * The SVG path (`M x y L x y ...`) of a sparkline of `values` in a `width` x `height` box (y grows downwards,
 * the largest value at the top). Non-finite values are skipped; fewer than two points give "".
 */
export function sparklinePath(values: ReadonlyArray<number> | null | undefined, width: number, height: number, pad = 1): string {
  const pts = (values ?? []).filter(v => typeof v === 'number' && isFinite(v));
  if (pts.length < 2) {
    return '';
  }
  const lo = Math.min(...pts);
  const hi = Math.max(...pts);
  const span = hi - lo;
  const w = width - 2 * pad;
  const h = height - 2 * pad;
  const r = (n: number) => String(Math.round(n * 100) / 100);
  return pts
    .map((v, i) => {
      const x = pad + (w * i) / (pts.length - 1);
      const y = span === 0 ? pad + h / 2 : pad + h * (1 - (v - lo) / span);
      return `${i === 0 ? 'M' : 'L'}${r(x)} ${r(y)}`;
    })
    .join(' ');
}

/** The status bar text of the active run: "name 120 / 1,000 · ETA 1m 15s". */
export function statusText(run: IRun): string {
  const parts = [run.name, formatStep(run.step, run.total_steps)];
  const eta = formatEta(run.eta_s);
  if (eta) {
    parts.push(`ETA ${eta}`);
  }
  return parts.join(' · ');
}

/** Whether one of this server's kernels runs it (the server says which; a terminal's or another user's run is not). */
export function isOwn(run: Pick<IRun, 'kernel_id'>): boolean {
  return typeof run.kernel_id === 'string' && run.kernel_id !== '';
}

/**
 * The run the status bar shows: only runs of this server's kernels, so it never jumps to another process's run.
 * It stays on `currentId` while that run is active, else takes the newest training run, else the newest other
 * active one (`runs` is newest first).
 */
export function activeRun(runs: ReadonlyArray<IRun>, currentId?: string | null): IRun | null {
  const active = runs.filter(r => isOwn(r) && isActive(r));
  return (
    active.find(r => r.id === currentId) ?? active.find(r => effectiveState(r) === 'training') ?? active[0] ?? null
  );
}

/** States in which a stop still does something (a stopping run needs none). */
const STOPPABLE = new Set(['queued', 'starting', 'training', 'paused']);

export interface IStopAllPlan {
  /** The live runs of this server's kernels: what "Stop all" stops. */
  stop: IRun[];
  /** The live runs of other processes, left alone. */
  others: IRun[];
}

/** What "Stop all" would do with the runs the sidebar shows. */
export function stopAllPlan(runs: ReadonlyArray<IRun>): IStopAllPlan {
  const live = runs.filter(r => r.alive && STOPPABLE.has(effectiveState(r)));
  return { stop: live.filter(isOwn), others: live.filter(r => !isOwn(r)) };
}

/** "1 run", "3 runs". */
export function plural(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

/** What "Stop all" says about the live runs it does not stop. */
export function leftAlone(n: number): string {
  return n === 1
    ? '1 run of another process (a terminal, another server or user) is left alone.'
    : `${n} runs of other processes (a terminal, another server or user) are left alone.`;
}

/** A path with `/` separators and no trailing slash ("/" stays "/"). */
function normPath(path: string): string {
  const p = path.replace(/\\/g, '/').replace(/\/+/g, '/');
  return p.length > 1 ? p.replace(/\/$/, '') : p;
}

/** The output directory of a run: the directory that holds its run directory (`…/runs` for `…/runs/exp1`). */
export function runParent(runDir: string): string {
  const p = normPath(runDir);
  const cut = p.lastIndexOf('/');
  return cut <= 0 ? '/' : p.slice(0, cut);
}

/**
 * A location as the sidebar shows it: relative to the Jupyter server's root when it lies inside it (`runs`,
 * `proj_a/runs`), else its last `parts` components (`…/proj_b/runs`); a path of more than `parts + 1` components
 * is shortened the same way inside the root too. The whole path is the tooltip.
 */
export function locationLabel(dir: string, root = '', parts = 2): string {
  const d = normPath(dir);
  const r = root ? normPath(root) : '';
  let segs: string[];
  if (r && (d === r || d.startsWith(r === '/' ? '/' : `${r}/`))) {
    if (d === r) {
      return r === '/' ? '/' : `${r.split('/').pop()} (server root)`;
    }
    segs = d.slice(r === '/' ? 1 : r.length + 1).split('/');
    if (segs.length <= parts + 1) {
      return segs.join('/');
    }
  } else {
    segs = d.split('/').filter(Boolean);
    if (segs.length <= parts) {
      return `/${segs.join('/')}`;
    }
  }
  return `…/${segs.slice(-parts).join('/')}`;
}

export interface IRunGroup {
  /** The output directory (the full path: the heading's tooltip and the group's key). */
  dir: string;
  /** The directory as the heading shows it (`locationLabel`). */
  label: string;
  runs: IRun[];
}

/**
 * The runs grouped by output directory, so runs of the same name in two folders sit under two headings. Groups
 * come in the order of their newest run and keep the runs' order (`runs` is newest first).
 */
export function groupRuns(runs: ReadonlyArray<IRun>, root = ''): IRunGroup[] {
  const groups = new Map<string, IRunGroup>();
  for (const run of runs) {
    const dir = runParent(run.run_dir);
    let group = groups.get(dir);
    if (!group) {
      group = { dir, label: locationLabel(dir, root), runs: [] };
      groups.set(dir, group);
    }
    group.runs.push(run);
  }
  return [...groups.values()];
}
