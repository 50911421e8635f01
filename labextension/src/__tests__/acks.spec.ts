import { AckTracker } from '../acks';
import type { IRun } from '../api';

function run(over: Partial<IRun>): IRun {
  return { id: 'a', name: 'r', run_dir: '/x', state: 'training', alive: true, step: 0, last_command: 0, ...over };
}

describe('AckTracker', () => {
  let t = 0;
  const clock = () => t;
  beforeEach(() => {
    t = 1000;
  });

  it('shows "sent" until last_command reaches seq, then "acknowledged"', () => {
    const acks = new AckTracker(clock);
    acks.sent('a', 'stop', 3);
    expect(acks.label('a')).toBe('stop sent #3');
    expect(acks.update([run({ last_command: 2 })])).toBe(false);
    expect(acks.get('a')?.state).toBe('sent');
    expect(acks.update([run({ last_command: 3, state: 'stopping' })])).toBe(true);
    expect(acks.get('a')?.state).toBe('acknowledged');
    expect(acks.label('a')).toBe('stop acknowledged (#3)');
  });

  it('counts a higher last_command as acknowledging (commands are applied in order)', () => {
    const acks = new AckTracker(clock);
    acks.sent('a', 'pause', 4);
    acks.update([run({ last_command: 9 })]);
    expect(acks.get('a')?.state).toBe('acknowledged');
  });

  it('acknowledges a stop that the run already finished', () => {
    const acks = new AckTracker(clock);
    acks.sent('a', 'stop', 1);
    acks.update([run({ last_command: 1, state: 'stopped', alive: false })]);
    expect(acks.get('a')?.state).toBe('acknowledged');
  });

  it('marks a command lost when the run ends or dies without acknowledging it', () => {
    const acks = new AckTracker(clock);
    acks.sent('a', 'pause', 5);
    acks.sent('b', 'stop', 1);
    acks.update([run({ last_command: 4, alive: false }), run({ id: 'b', state: 'failed', alive: false })]);
    expect(acks.get('a')?.state).toBe('lost');
    expect(acks.get('b')?.state).toBe('lost');
    expect(acks.label('a')).toBe('pause #5 not acknowledged: the run ended');
  });

  it('keeps the newest command per run and forgets settled ones after a while', () => {
    const acks = new AckTracker(clock);
    acks.sent('a', 'pause', 1);
    acks.sent('a', 'resume', 2);
    expect(acks.label('a')).toBe('resume sent #2');
    acks.update([run({ last_command: 2 })]);
    t += AckTracker.KEEP_MS - 1;
    expect(acks.update([run({ last_command: 2 })])).toBe(false);
    expect(acks.label('a')).toBe('resume acknowledged (#2)');
    t += 2;
    expect(acks.update([run({ last_command: 2 })])).toBe(true);
    expect(acks.label('a')).toBe('');
  });
});
