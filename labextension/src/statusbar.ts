/**
 * The status bar item (JupyterLab only): the name, step / total and ETA of the active run of this server's kernels;
 * hidden without one. Runs of other processes (a terminal, another server or user) are never shown here. Its colours
 * are the theme's (light, dark, high contrast): JupyterLab CSS variables only (style/base.css).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';
import { CommandIDs, PluginIDs } from './constants';
import { activeRun, progressFraction, statusText } from './format';
import { finetuneIcon } from './icons';
import { RunsModel } from './model';
import { IRunsModel } from './tokens';

export class RunStatus extends Widget {
  private icon = document.createElement('span');
  private text = document.createElement('span');
  private bar = document.createElement('span');
  private fill = document.createElement('span');
  private current: string | null = null; // the run shown: kept while it is active

  constructor(private model: RunsModel) {
    super();
    this.addClass('nbf-Status');
    this.addClass('jp-mod-highlighted'); // the status bar's own hover for clickable items
    this.icon.className = 'nbf-Status-icon';
    finetuneIcon.element({ container: this.icon, height: '14px', width: '14px' });
    this.text.className = 'nbf-Status-text';
    this.bar.className = 'nbf-Status-bar';
    this.fill.className = 'nbf-Status-fill';
    this.bar.append(this.fill);
    this.node.append(this.icon, this.text, this.bar);
    model.changed.connect(this.refresh, this);
    this.refresh();
  }

  get isActive(): boolean {
    return activeRun(this.model.runs, this.current) !== null;
  }

  refresh(): void {
    const run = activeRun(this.model.runs, this.current);
    this.current = run?.id ?? null;
    this.text.textContent = run ? statusText(run) : '';
    const frac = run ? progressFraction(run.step, run.total_steps) : null;
    this.bar.style.display = frac === null ? 'none' : '';
    this.fill.style.width = `${((frac ?? 0) * 100).toFixed(1)}%`;
    this.node.dataset.state = run?.state ?? '';
    this.node.title = run ? `${run.name}: ${run.state}${frac === null ? '' : `, ${(frac * 100).toFixed(0)}%`}` : '';
    this.node.dataset.runId = run?.id ?? '';
  }

  dispose(): void {
    this.model.changed.disconnect(this.refresh, this);
    super.dispose();
  }
}

export const statusbarPlugin: JupyterFrontEndPlugin<void> = {
  id: PluginIDs.statusbar,
  description: "The active fine-tune run's progress in the status bar.",
  autoStart: true,
  requires: [IRunsModel],
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, model: RunsModel, statusBar: IStatusBar | null) => {
    if (!statusBar) {
      return; // Notebook 7 and other shells without a status bar
    }
    const item = new RunStatus(model);
    item.node.addEventListener('click', () => void app.commands.execute(CommandIDs.showRuns));
    statusBar.registerStatusItem(PluginIDs.statusbar, {
      item,
      align: 'left',
      rank: 5,
      isActive: () => item.isActive,
      activeStateChanged: model.changed
    });
    model.setConsumer('statusbar', true);
  }
};
