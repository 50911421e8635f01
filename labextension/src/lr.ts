/**
 * The learning-rate text of the Set LR dialog: parsing any notation people write (`1e-5`, `6E-5`, `0.00006`,
 * `.5e-4`, `+2e-5`) with a message that says why a value is refused, and the value to prefill. Pure, unit-tested.
 */
import type { IRun } from './api';

export type LrParse =
  /** `warning`: accepted, but worth a second look (shown inline, Ok stays enabled). */
  | { ok: true; value: number; warning?: string }
  | { ok: false; error: string };

/** A decimal number, optionally signed, with an optional exponent; nothing else (no hex, no `Infinity`). */
const NUMBER_RE = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** Above this, the value is accepted with a warning: fine-tuning rates are far smaller. */
export const LARGE_LR = 0.1;

/** Parses the text of the dialog's input. */
export function parseLearningRate(text: string): LrParse {
  // the minus sign of typographic text and a stray space around the exponent are harmless
  const s = text.trim().replace(/\u2212/g, '-').replace(/\s*(e)\s*/i, '$1');
  if (s === '') {
    return { ok: false, error: 'Enter a learning rate, e.g. 1e-5 or 0.00002.' };
  }
  if (/^[+-]?\d*,\d+(e[+-]?\d+)?$/i.test(s)) {
    return { ok: false, error: `Use a dot for decimals: ${s.replace(',', '.')}` };
  }
  if (!NUMBER_RE.test(s)) {
    return { ok: false, error: `"${short(text.trim())}" is not a number: write it like 1e-5, 6e-5 or 0.00006.` };
  }
  const value = Number(s);
  if (!isFinite(value)) {
    return { ok: false, error: `${short(s)} is too large.` };
  }
  if (value < 0) {
    return { ok: false, error: 'A learning rate must be positive.' };
  }
  if (value === 0) {
    if (/[1-9]/.test(s.split(/e/i)[0])) {
      return { ok: false, error: `${short(s)} is too small: it rounds to 0.` };
    }
    return { ok: false, error: 'A learning rate must be greater than 0 (to stop learning for a while, use Pause).' };
  }
  if (value > LARGE_LR) {
    const warning = `${formatLr(value)} is unusually large for fine-tuning (typical: 1e-6 to 1e-3).`;
    return { ok: true, value, warning };
  }
  return { ok: true, value };
}

/**
 * A learning rate as people write it, to `digits` significant digits (trailing zeros dropped): 2e-5, 7.08e-5,
 * 0.001, 0.03, 1.5. Scientific notation below 1e-3, where counting zeros gets error-prone.
 */
export function formatLr(value: number | null | undefined, digits = 6): string {
  if (typeof value !== 'number' || !isFinite(value)) {
    return '';
  }
  const a = Math.abs(value);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) {
    const [mantissa, exp] = value.toExponential(digits - 1).split('e');
    return `${String(Number(mantissa))}e${Number(exp)}`;
  }
  return String(Number(value.toPrecision(digits)));
}

/** The value the dialog starts with: the schedule's base (what `set lr` replaces), else the last logged lr. */
export function initialLr(run: Pick<IRun, 'base_lr' | 'lr'>): string {
  return formatLr(run.base_lr ?? run.lr ?? null);
}

/** The hint under the input: what the run uses now. */
export function lrHint(run: Pick<IRun, 'base_lr' | 'lr'>): string {
  const parts: string[] = [];
  if (typeof run.lr === 'number') {
    parts.push(`last logged lr ${formatLr(run.lr, 3)}`);
  }
  if (typeof run.base_lr === 'number' && formatLr(run.base_lr, 3) !== formatLr(run.lr, 3)) {
    parts.push(`schedule base ${formatLr(run.base_lr, 3)}`);
  }
  const now = parts.length ? `Now: ${parts.join(', ')}. ` : '';
  const rule =
    'The new value becomes the base of the running schedule from the next optimizer step; warm-up and decay go on.';
  return `${now}${rule}`;
}

function short(s: string): string {
  return s.length <= 24 ? s : `${s.slice(0, 21)}...`;
}
