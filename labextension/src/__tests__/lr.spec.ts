import { formatLr, initialLr, LARGE_LR, lrHint, parseLearningRate } from '../lr';
import { setLabel } from '../model';

const value = (text: string) => {
  const p = parseLearningRate(text);
  return p.ok ? p.value : p.error;
};
const error = (text: string) => {
  const p = parseLearningRate(text);
  return p.ok ? `accepted ${p.value}` : p.error;
};

describe('parseLearningRate', () => {
  it.each([
    ['1e-5', 1e-5],
    ['6e-5', 6e-5],
    ['0.00006', 6e-5],
    ['1E-5', 1e-5],
    ['2.5e-4', 2.5e-4],
    ['.5e-4', 5e-5],
    ['5.e-5', 5e-5],
    ['+3e-5', 3e-5],
    ['  7e-6  ', 7e-6],
    ['1e+0', 1],
    ['1 e-5', 1e-5],
    ['1e\u22125', 1e-5], // the typographic minus of copied text
    ['0.001', 0.001],
    ['3', 3]
  ])('accepts %s', (text, expected) => {
    expect(value(text)).toBe(expected);
  });

  it.each([
    ['', /Enter a learning rate/],
    ['   ', /Enter a learning rate/],
    ['abc', /"abc" is not a number: write it like 1e-5/],
    ['1e-5x', /not a number/],
    ['0x10', /not a number/],
    ['Infinity', /not a number/],
    ['NaN', /not a number/],
    ['1e', /not a number/],
    ['1e-5e-3', /not a number/],
    ['-1e-5', /must be positive/],
    ['0', /greater than 0/],
    ['0.0', /greater than 0/],
    ['-0', /greater than 0/],
    ['0e5', /greater than 0/],
    ['1e-400', /too small: it rounds to 0/],
    ['1e999', /too large/],
    ['0,00006', /Use a dot for decimals: 0\.00006/]
  ])('refuses %p, saying why', (text, why) => {
    expect(error(text)).toMatch(why);
  });

  it('accepts a large value with a warning', () => {
    const p = parseLearningRate('0.5');
    expect(p).toEqual({ ok: true, value: 0.5, warning: expect.stringMatching(/unusually large/) });
    expect(parseLearningRate(String(LARGE_LR))).toEqual({ ok: true, value: LARGE_LR });
  });

  it('shortens very long bad input in its message', () => {
    expect(error('x'.repeat(100))).toContain(`"${'x'.repeat(21)}..."`);
  });
});

describe('formatLr', () => {
  it('writes rates as people do and round-trips through the parser', () => {
    expect(formatLr(2e-5)).toBe('2e-5');
    expect(formatLr(7.079457843841373e-5, 3)).toBe('7.08e-5');
    expect(formatLr(0.001)).toBe('0.001');
    expect(formatLr(0.03)).toBe('0.03');
    expect(formatLr(1.5)).toBe('1.5');
    expect(formatLr(1e-3 * 0.99999)).toBe('9.9999e-4');
    expect(formatLr(null)).toBe('');
    expect(formatLr(NaN)).toBe('');
    for (const v of [1e-5, 6e-5, 2.5e-4, 0.001, 0.02, 1]) {
      expect(value(formatLr(v))).toBe(v);
    }
  });
});

describe('the dialog prefill and hint', () => {
  it("prefills the schedule's base, else the last logged lr, else nothing", () => {
    expect(initialLr({ base_lr: 1e-3, lr: 8.3e-7 })).toBe('0.001');
    expect(initialLr({ base_lr: null, lr: 6e-5 })).toBe('6e-5');
    expect(initialLr({})).toBe('');
  });

  it('says what the run uses now', () => {
    expect(lrHint({ base_lr: 1e-3, lr: 8.3e-7 })).toMatch(/^Now: last logged lr 8\.3e-7, schedule base 0\.001\. /);
    expect(lrHint({ base_lr: 1e-5, lr: 1e-5 })).toMatch(/^Now: last logged lr 1e-5\. /);
    expect(lrHint({})).toMatch(/^The new value becomes the base/);
  });

  it('labels a set command with its values', () => {
    expect(setLabel({ lr: 1e-5 })).toBe('lr=1e-5');
    expect(setLabel({ lr: 2.5e-5, max_steps: 100000 })).toBe('lr=2.5e-5, max_steps=100000');
  });
});
