import type { IRun } from '../api';
import {
  activeRun,
  groupRuns,
  locationLabel,
  runParent,
  effectiveState,
  formatDuration,
  formatEta,
  formatMetric,
  formatNumber,
  formatStep,
  isOwn,
  leftAlone,
  plural,
  progressFraction,
  sparklinePath,
  stateBadge,
  statusText,
  stopAllPlan
} from '../format';

function run(over: Partial<IRun>): IRun {
  return { id: 'i', name: 'r', run_dir: '/x', state: 'training', alive: true, step: 0, last_command: 0, ...over };
}

describe('states', () => {
  it('shows a training run whose process is gone as dead', () => {
    expect(effectiveState({ state: 'training', alive: false })).toBe('dead');
    expect(effectiveState({ state: 'paused', alive: false })).toBe('dead');
    expect(effectiveState({ state: 'training', alive: true })).toBe('training');
    expect(effectiveState({ state: 'finished', alive: false })).toBe('finished');
    expect(effectiveState({ state: 'dead', alive: false })).toBe('dead');
  });

  it('gives each state a badge; dead says since when', () => {
    expect(stateBadge(run({}))).toEqual({ label: 'training', kind: 'running', title: 'training' });
    const dead = stateBadge(run({ alive: false, heartbeat_age_s: 125 }));
    expect(dead.label).toBe('dead');
    expect(dead.kind).toBe('dead');
    expect(dead.title).toBe('process gone; last heartbeat 2m 05s ago');
    expect(stateBadge(run({ state: 'failed', alive: false, reason: 'CUDA OOM' })).title).toBe('failed: CUDA OOM');
    expect(stateBadge(run({ state: 'stopped', alive: false })).kind).toBe('stopped');
    expect(stateBadge(run({ state: 'finished', alive: false })).kind).toBe('done');
    expect(stateBadge(run({ state: 'weird' })).label).toBe('weird');
  });
});

describe('durations and numbers', () => {
  it.each([
    [0, '0s'],
    [59.4, '59s'],
    [75, '1m 15s'],
    [3725, '1h 02m'],
    [90000, '1d 01h']
  ])('formatDuration(%d) = %s', (s, text) => expect(formatDuration(s)).toBe(text));

  it('hides unknown ETAs', () => {
    expect(formatEta(null)).toBe('');
    expect(formatEta(undefined)).toBe('');
    expect(formatEta(-1)).toBe('');
    expect(formatEta(Infinity)).toBe('');
    expect(formatEta(61)).toBe('1m 01s');
  });

  it('formats steps, progress and metrics', () => {
    expect(formatStep(120, 1000)).toBe('120 / 1,000');
    expect(formatStep(5, null)).toBe('5');
    expect(progressFraction(250, 1000)).toBe(0.25);
    expect(progressFraction(2000, 1000)).toBe(1);
    expect(progressFraction(5, 0)).toBeNull();
    expect(formatNumber(0.123456)).toBe('0.1235');
    expect(formatNumber(2e-5)).toBe('2.00e-5');
    expect(formatNumber(null)).toBe('–');
    expect(formatMetric({ name: 'eval_accuracy', value: 0.91234 })).toBe('eval_accuracy 0.9123');
    expect(formatMetric(null)).toBe('');
  });
});

describe('sparklinePath', () => {
  it('maps the largest value to the top and the smallest to the bottom, evenly in x', () => {
    expect(sparklinePath([2, 1, 0], 100, 20, 0)).toBe('M0 0 L50 10 L100 20');
  });

  it('respects padding and rounds', () => {
    expect(sparklinePath([1, 3], 10, 10, 1)).toBe('M1 9 L9 1');
    expect(sparklinePath([0, 1, 0.3333], 30, 10, 0)).toBe('M0 10 L15 0 L30 6.67');
  });

  it('draws a flat line for constant values and nothing for fewer than two points', () => {
    expect(sparklinePath([5, 5, 5], 10, 10, 0)).toBe('M0 5 L5 5 L10 5');
    expect(sparklinePath([1], 10, 10)).toBe('');
    expect(sparklinePath([], 10, 10)).toBe('');
    expect(sparklinePath(undefined, 10, 10)).toBe('');
  });

  it('skips non-finite values', () => {
    expect(sparklinePath([1, NaN, 0], 10, 10, 0)).toBe('M0 0 L10 10');
  });
});

describe('status bar', () => {
  it('picks the newest training run, ignoring dead and finished ones', () => {
    const runs = [
      run({ id: 'a', name: 'dead-one', alive: false, kernel_id: 'k' }),
      run({ id: 'b', name: 'done', state: 'finished', alive: false, kernel_id: 'k' }),
      run({ id: 'c', name: 'paused', state: 'paused', kernel_id: 'k' }),
      run({ id: 'd', name: 'live', step: 120, total_steps: 1000, eta_s: 75, kernel_id: 'k' })
    ];
    expect(activeRun(runs)?.id).toBe('d');
    expect(activeRun(runs.slice(0, 3))?.id).toBe('c');
    expect(activeRun(runs.slice(0, 2))).toBeNull();
    expect(statusText(runs[3])).toBe('live · 120 / 1,000 · ETA 1m 15s');
    expect(statusText(run({ name: 'x', step: 3 }))).toBe('x · 3');
  });

  it("shows only runs of this server's kernels and never jumps to another process's run", () => {
    const other = run({ id: 'o', name: 'terminal-run', kernel_id: null });
    const mine = run({ id: 'm', name: 'mine', kernel_id: 'k1' });
    expect(activeRun([other])).toBeNull();
    expect(activeRun([other, mine])?.id).toBe('m');
    // mine ends: the item hides instead of switching to the other process's run
    expect(activeRun([other, { ...mine, state: 'stopped', alive: false }], 'm')).toBeNull();
    expect(isOwn(mine) && !isOwn(other) && !isOwn(run({ kernel_id: '' }))).toBe(true);
  });

  it('stays on the run it shows while that one is active, even when a newer one starts', () => {
    const older = run({ id: 'a', state: 'paused', kernel_id: 'k1' });
    const newer = run({ id: 'b', kernel_id: 'k2' });
    expect(activeRun([newer, older], 'a')?.id).toBe('a');
    expect(activeRun([newer, older])?.id).toBe('b');
    expect(activeRun([newer, { ...older, state: 'finished', alive: false }], 'a')?.id).toBe('b');
  });
});

describe('stop all', () => {
  it("stops the live runs of this server's kernels and counts the others it leaves alone", () => {
    const runs = [
      run({ id: 'a', kernel_id: 'k1' }),
      run({ id: 'b', state: 'paused', kernel_id: 'k2' }),
      run({ id: 'c', kernel_id: null }), // a terminal's run
      run({ id: 'd' }), // an older server that sends no kernel_id: not ours
      run({ id: 'e', state: 'stopping', kernel_id: 'k1' }), // already stopping
      run({ id: 'f', state: 'training', alive: false, kernel_id: 'k1' }), // dead
      run({ id: 'g', state: 'finished', alive: false, kernel_id: 'k1' })
    ];
    const plan = stopAllPlan(runs);
    expect(plan.stop.map(r => r.id)).toEqual(['a', 'b']);
    expect(plan.others.map(r => r.id)).toEqual(['c', 'd']);
    expect(stopAllPlan([]).stop).toEqual([]);
    expect([plural(1, 'run'), plural(2, 'run'), plural(0, 'run')]).toEqual(['1 run', '2 runs', '0 runs']);
    expect(leftAlone(1)).toMatch(/^1 run of another process .* is left alone\.$/);
    expect(leftAlone(3)).toMatch(/^3 runs of other processes .* are left alone\.$/);
  });
});


describe('runs grouped by location', () => {
  const root = '/home/ann/work';

  it("takes a run's output directory as its location", () => {
    expect(runParent('/home/ann/work/runs/exp1')).toBe('/home/ann/work/runs');
    expect(runParent('/home/ann/work/runs/exp1/')).toBe('/home/ann/work/runs');
    expect(runParent('C:\\Users\\ann\\runs\\exp1')).toBe('C:/Users/ann/runs');
    expect(runParent('/exp1')).toBe('/');
  });

  it('shows a location relative to the server root, else by its last two folders', () => {
    expect(locationLabel('/home/ann/work/runs', root)).toBe('runs');
    expect(locationLabel('/home/ann/work/proj_a/runs', root)).toBe('proj_a/runs');
    expect(locationLabel('/home/ann/work/a/b/c/runs', root)).toBe('…/c/runs');
    expect(locationLabel('/home/ann/work', root)).toBe('work (server root)');
    // a sibling whose name starts like the root is outside it
    expect(locationLabel('/home/ann/workshop/runs', root)).toBe('…/workshop/runs');
    expect(locationLabel('/tmp/x/runs', root)).toBe('…/x/runs');
    expect(locationLabel('/runs', root)).toBe('/runs');
    expect(locationLabel('/home/ann/work/runs', `${root}/`)).toBe('runs');
    expect(locationLabel('/srv/runs', '/')).toBe('srv/runs');
    expect(locationLabel('/srv/runs')).toBe('/srv/runs');
  });

  it('puts runs of the same name in two folders under two headings, newest group first', () => {
    const runs = [
      run({ id: '1', name: 'exp', run_dir: '/home/ann/work/proj_b/runs/exp' }),
      run({ id: '2', name: 'exp', run_dir: '/home/ann/work/proj_a/runs/exp' }),
      run({ id: '3', name: 'other', run_dir: '/home/ann/work/proj_b/runs/other' }),
      run({ id: '4', name: 'exp-2', run_dir: '/home/ann/work/proj_a/runs/exp-2' })
    ];
    const groups = groupRuns(runs, root);
    expect(groups.map(g => [g.dir, g.label, g.runs.map(r => r.id)])).toEqual([
      ['/home/ann/work/proj_b/runs', 'proj_b/runs', ['1', '3']],
      ['/home/ann/work/proj_a/runs', 'proj_a/runs', ['2', '4']]
    ]);
    // control: one folder is one group, whatever the names
    expect(groupRuns([runs[0], runs[2]], root)).toHaveLength(1);
    expect(groupRuns([], root)).toEqual([]);
  });
});
