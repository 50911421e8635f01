/**
 * The Set LR dialog: a text input (not `type="number"`, whose default `step` refuses 1e-5), prefilled with the
 * run's base learning rate, checked as the user types with the reason shown inline; Enter submits a valid value.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';
import type { IRun } from './api';
import { initialLr, lrHint, parseLearningRate } from './lr';

/** The dialog's body; `getValue()` is the accepted learning rate (the dialog refuses Ok while it is invalid). */
export class LearningRateBody extends Widget {
  readonly input = document.createElement('input');
  private message = document.createElement('div');

  constructor(run: Pick<IRun, 'base_lr' | 'lr'>) {
    super();
    this.addClass('nbf-LrDialog');
    const label = document.createElement('label');
    label.textContent = 'New base learning rate';
    label.htmlFor = this.input.id = `nbf-lr-input-${Private.counter++}`;
    this.input.type = 'text';
    this.input.inputMode = 'decimal';
    this.input.autocomplete = 'off';
    this.input.spellcheck = false;
    this.input.className = 'jp-mod-styled nbf-LrDialog-input';
    this.input.placeholder = 'e.g. 1e-5';
    this.input.value = initialLr(run);
    this.message.className = 'nbf-LrDialog-message';
    this.message.setAttribute('role', 'status');
    this.message.id = `${this.input.id}-message`;
    this.input.setAttribute('aria-describedby', this.message.id);
    const hint = document.createElement('div');
    hint.className = 'nbf-LrDialog-hint';
    hint.textContent = lrHint(run);
    this.node.append(label, this.input, this.message, hint);
    this.validate();
  }

  /** Checks the current text; marks the input invalid (which disables Ok and Enter) and says why. */
  validate(): void {
    const parsed = parseLearningRate(this.input.value);
    const text = parsed.ok ? (parsed.warning ?? '') : parsed.error;
    this.input.setCustomValidity(parsed.ok ? '' : parsed.error);
    this.input.classList.toggle('nbf-mod-invalid', !parsed.ok);
    this.input.setAttribute('aria-invalid', String(!parsed.ok));
    this.message.textContent = text;
    this.message.dataset.kind = parsed.ok ? (parsed.warning ? 'warning' : '') : 'error';
  }

  getValue(): number | null {
    const parsed = parseLearningRate(this.input.value);
    return parsed.ok ? parsed.value : null;
  }

  /**
   * The dialog re-checks its inputs on every `input` event in a capture listener on `document`; validating in a
   * capture listener on `window`, which runs before it, keeps its Ok button in step with this keystroke.
   */
  handleEvent(event: Event): void {
    if (event.type === 'input' && event.target === this.input) {
      this.validate();
    }
  }

  protected onAfterAttach(): void {
    window.addEventListener('input', this, true);
    // the dialog checks validity only on input events: one now, once its own listeners are attached (and it has
    // focused the input); the prefilled value is selected, so typing replaces it
    void Promise.resolve().then(() => {
      this.input.dispatchEvent(new Event('input', { bubbles: true }));
      this.input.select();
    });
  }

  protected onBeforeDetach(): void {
    window.removeEventListener('input', this, true);
  }
}

/** Asks for a new learning rate for `run`; null when cancelled. */
export async function askLearningRate(run: IRun): Promise<number | null> {
  const body = new LearningRateBody(run);
  const result = await showDialog({
    title: `Set learning rate of ${run.name}`,
    body,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Set' })],
    focusNodeSelector: 'input'
  });
  return result.button.accept ? (result.value as number | null) : null;
}

namespace Private {
  export let counter = 0;
}
