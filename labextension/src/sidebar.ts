/** The "Fine-tune runs" sidebar: a list of runs with progress, a loss sparkline and Stop / Pause / Resume / Set LR. */
import { JupyterFrontEnd, JupyterFrontEndPlugin, ILayoutRestorer } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { PageConfig } from '@jupyterlab/coreutils';
import { Widget } from '@lumino/widgets';
import type { IRun } from './api';
import { CATEGORY, CommandIDs, PluginIDs, SIDEBAR_ID } from './constants';
import {
  effectiveState,
  formatEta,
  formatMetric,
  formatNumber,
  formatStep,
  groupRuns,
  isOwn,
  plural,
  progressFraction,
  sparklinePath,
  stateBadge
} from './format';
import { finetuneIcon } from './icons';
import { formatLr } from './lr';
import { askLearningRate } from './lrdialog';
import { RunsModel } from './model';
import { IRunsModel } from './tokens';

const SVG_NS = 'http://www.w3.org/2000/svg';
const SPARK_W = 120;
const SPARK_H = 28;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** Sets the text of a one-line element and, while it has any, the same text as its tooltip (shown when cut). */
function setLine(node: HTMLElement, text: string, title = text): void {
  node.textContent = text;
  node.title = text ? title : '';
}

/** One run in the list; its DOM is built once and updated in place, so clicks are never lost to a re-render. */
class RunRow {
  readonly node = el('li', 'nbf-Run');
  private _run: IRun;
  private name = el('span', 'nbf-Run-name');
  private badge = el('span', 'nbf-Badge');
  private owner = el('span', 'nbf-Run-owner', 'other process');
  private step = el('span', 'nbf-Run-step');
  private eta = el('span', 'nbf-Run-eta');
  private bar = el('div', 'nbf-Progress');
  private fill = el('div', 'nbf-Progress-fill');
  private metric = el('span', 'nbf-Run-metric');
  private loss = el('span', 'nbf-Run-loss');
  private lr = el('span', 'nbf-Run-lr');
  private spark = document.createElementNS(SVG_NS, 'svg');
  private path = document.createElementNS(SVG_NS, 'path');
  private ack = el('div', 'nbf-Run-ack');
  private error = el('div', 'nbf-Run-error');
  private buttons: { [name: string]: HTMLButtonElement } = {};

  constructor(
    run: IRun,
    private model: RunsModel,
    private commands: JupyterFrontEnd['commands']
  ) {
    this._run = run;
    this.node.dataset.runId = run.id;
    const head = el('div', 'nbf-Run-head');
    head.append(this.name, this.owner, this.badge);
    const line = el('div', 'nbf-Run-line');
    line.append(this.step, this.eta);
    this.bar.append(this.fill);
    this.spark.setAttribute('class', 'nbf-Spark');
    this.spark.setAttribute('width', String(SPARK_W));
    this.spark.setAttribute('height', String(SPARK_H));
    this.spark.setAttribute('viewBox', `0 0 ${SPARK_W} ${SPARK_H}`);
    this.spark.setAttribute('aria-label', 'training loss');
    this.path.setAttribute('class', 'nbf-Spark-line');
    this.spark.append(this.path);
    const stats = el('div', 'nbf-Run-stats');
    const numbers = el('div', 'nbf-Run-numbers');
    numbers.append(this.loss, this.lr, this.metric);
    stats.append(numbers, this.spark);
    const actions = el('div', 'nbf-Run-actions');
    const add = (name: string, label: string, title: string, handler: () => void) => {
      const b = el('button', `jp-Button jp-mod-styled jp-mod-small nbf-Button nbf-Button-${name}`, label);
      b.type = 'button';
      b.title = title;
      b.addEventListener('click', event => {
        event.stopPropagation();
        handler();
      });
      this.buttons[name] = b;
      actions.append(b);
    };
    add('stop', 'Stop', 'Checkpoint, then stop the run', () => void this.model.control(this._run, 'stop'));
    add('pause', 'Pause', 'Pause after the current step', () => void this.model.control(this._run, 'pause'));
    add('resume', 'Resume', 'Resume the paused run', () => void this.model.control(this._run, 'resume'));
    add('lr', 'Set LR', 'Set a new base learning rate from the next optimizer step', () => void this.setLr());
    add('panel', 'Open panel', 'Insert and run `%finetune show NAME` in the current notebook', () => {
      void this.commands.execute(CommandIDs.openPanel, { name: this._run.name });
    });
    this.node.append(head, line, this.bar, stats, actions, this.ack, this.error);
    this.update(run);
  }

  private async setLr(): Promise<void> {
    const run = this._run;
    const lr = await askLearningRate(run);
    if (lr !== null) {
      await this.model.control(run, 'set', { lr });
    }
  }

  update(run: IRun): void {
    this._run = run;
    const state = effectiveState(run);
    const badge = stateBadge(run);
    this.node.dataset.state = state;
    // one line each: a long name, number or path is cut with an ellipsis, the whole of it on hover
    setLine(this.name, run.name, `${run.name}\n${run.run_dir}`);
    this.badge.textContent = badge.label;
    this.badge.title = badge.title;
    this.badge.className = `nbf-Badge nbf-Badge-${badge.kind}`;
    const frac = progressFraction(run.step, run.total_steps);
    const step = `step ${formatStep(run.step, run.total_steps)}`;
    setLine(this.step, step, frac === null ? step : `${step} (${(frac * 100).toFixed(1)}%)`);
    const eta = formatEta(run.eta_s);
    setLine(this.eta, eta && state === 'training' ? `ETA ${eta}` : '');
    this.bar.style.display = frac === null ? 'none' : '';
    this.fill.style.width = `${((frac ?? 0) * 100).toFixed(1)}%`;
    this.bar.title = frac === null ? '' : `${(frac * 100).toFixed(1)}%`;
    setLine(this.loss, typeof run.loss === 'number' ? `loss ${formatNumber(run.loss)}` : '', `last logged training loss ${run.loss}`);
    setLine(
      this.lr,
      typeof run.lr === 'number' ? `lr ${formatLr(run.lr, 3)}` : '',
      typeof run.lr === 'number' ? `last logged learning rate ${formatLr(run.lr)}` : ''
    );
    const metric = formatMetric(run.best_metric);
    setLine(this.metric, metric ? `best ${metric}` : '', `best ${run.best_metric?.name} ${run.best_metric?.value}`);
    const d = sparklinePath(run.loss_history, SPARK_W, SPARK_H, 2);
    this.path.setAttribute('d', d);
    this.spark.style.display = d ? '' : 'none';
    const live = run.alive && ['queued', 'starting', 'training', 'paused'].includes(state);
    const own = isOwn(run);
    this.node.dataset.own = String(own);
    this.owner.style.display = live && !own ? '' : 'none';
    this.owner.title =
      `Not run by a kernel of this Jupyter server (process ${run.pid ?? '?'}: a terminal, another server or ` +
      'user). "Stop all" leaves it alone; its own Stop button still works.';
    this.buttons.stop.disabled = !live;
    this.buttons.pause.disabled = !live;
    this.buttons.pause.style.display = state === 'paused' ? 'none' : '';
    this.buttons.resume.style.display = state === 'paused' ? '' : 'none';
    this.buttons.resume.disabled = !live;
    this.buttons.lr.disabled = !live;
    const ack = this.model.acks.get(run.id);
    this.ack.textContent = this.model.acks.label(run.id);
    this.ack.dataset.ack = ack?.state ?? '';
    const error = this.model.runError(run.id);
    this.error.textContent = error;
    this.error.style.display = error ? '' : 'none';
  }
}

/** The runs of one output directory under a heading: the directory, shortened, the whole path on hover. */
class RunGroup {
  readonly node = el('li', 'nbf-Group');
  readonly list = el('ul', 'nbf-Group-runs');
  private where = el('span', 'nbf-Group-where');
  private count = el('span', 'nbf-Group-count');

  constructor(readonly dir: string) {
    this.node.dataset.dir = dir;
    const head = el('div', 'nbf-Group-head');
    head.append(this.where, this.count);
    this.node.append(head, this.list);
  }

  update(label: string, n: number): void {
    // the label is cut at its start (`…older/runs`): the end of a path is what tells two folders apart
    if (this.where.textContent !== label) {
      const text = document.createElement('bdi');
      text.textContent = label;
      this.where.replaceChildren(text);
    }
    this.where.title = this.dir;
    this.count.textContent = String(n);
    this.count.title = `${plural(n, 'run')} in ${this.dir}`;
  }
}

/** Puts `nodes` into `parent` in this order, moving only what is out of place (rows keep focus and clicks). */
function placeChildren(parent: HTMLElement, nodes: HTMLElement[]): void {
  nodes.forEach((node, i) => {
    if (parent.children[i] !== node) {
      parent.insertBefore(node, parent.children[i] ?? null);
    }
  });
  while (parent.children.length > nodes.length) {
    parent.lastElementChild!.remove();
  }
}

export class RunsSidebar extends Widget {
  private list = el('ul', 'nbf-RunList');
  private empty = el('div', 'nbf-Empty', 'No fine-tune runs yet. Start one with a %%finetune cell.');
  private error = el('div', 'nbf-Error');
  private rows = new Map<string, RunRow>();
  private groups = new Map<string, RunGroup>();

  /** `root`: the Jupyter server's root directory (locations inside it are shown relative to it). */
  constructor(
    private model: RunsModel,
    private commands: JupyterFrontEnd['commands'],
    private root = ''
  ) {
    super();
    this.id = SIDEBAR_ID;
    this.addClass('nbf-Sidebar');
    this.title.icon = finetuneIcon;
    this.title.caption = 'Fine-tune runs';
    const header = el('div', 'nbf-Header');
    const title = el('h2', 'nbf-Title', 'Fine-tune runs');
    const stopAll = el('button', 'jp-Button jp-mod-styled jp-mod-small nbf-Button nbf-StopAll', 'Stop all');
    stopAll.type = 'button';
    stopAll.title = "Stop the live runs of this server's kernels (checkpoint first; asks before)";
    stopAll.addEventListener('click', () => void this.commands.execute(CommandIDs.stopAll));
    header.append(title, stopAll);
    this.error.style.display = 'none';
    this.node.append(header, this.error, this.empty, this.list);
    model.changed.connect(this.render, this);
    this.render();
  }

  render(): void {
    const runs = this.model.runs;
    this.error.textContent = this.model.error;
    this.error.style.display = this.model.error ? '' : 'none';
    this.empty.style.display = runs.length || !this.model.loaded ? 'none' : '';
    const seen = new Set<string>();
    const groupNodes: HTMLElement[] = [];
    for (const g of groupRuns(runs, this.root)) {
      let group = this.groups.get(g.dir);
      if (!group) {
        group = new RunGroup(g.dir);
        this.groups.set(g.dir, group);
      }
      group.update(g.label, g.runs.length);
      groupNodes.push(group.node);
      const rowNodes = g.runs.map(run => {
        seen.add(run.id);
        let row = this.rows.get(run.id);
        if (row) {
          row.update(run);
        } else {
          row = new RunRow(run, this.model, this.commands);
          this.rows.set(run.id, row);
        }
        return row.node;
      });
      placeChildren(group.list, rowNodes);
    }
    placeChildren(this.list, groupNodes);
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.node.remove();
        this.rows.delete(id);
      }
    }
    for (const [dir, group] of this.groups) {
      if (!groupNodes.includes(group.node)) {
        this.groups.delete(dir);
      }
    }
  }

  protected onAfterShow(): void {
    this.model.setConsumer('sidebar', true, true);
  }

  protected onAfterHide(): void {
    this.model.setConsumer('sidebar', false);
  }

  dispose(): void {
    this.model.setConsumer('sidebar', false);
    this.model.changed.disconnect(this.render, this);
    super.dispose();
  }
}

export const sidebarPlugin: JupyterFrontEndPlugin<void> = {
  id: PluginIDs.sidebar,
  description: 'The "Fine-tune runs" sidebar.',
  autoStart: true,
  requires: [IRunsModel],
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    model: RunsModel,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const sidebar = new RunsSidebar(model, app.commands, PageConfig.getOption('serverRoot'));
    app.shell.add(sidebar, 'left', { rank: 850 });
    restorer?.add(sidebar, SIDEBAR_ID);
    app.commands.addCommand(CommandIDs.showRuns, {
      label: 'Show Fine-tune Runs',
      caption: 'Open the fine-tune runs sidebar',
      icon: finetuneIcon,
      execute: () => app.shell.activateById(sidebar.id)
    });
    palette?.addItem({ command: CommandIDs.showRuns, category: CATEGORY });
  }
};
