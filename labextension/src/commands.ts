/**
 * Commands: insert a %%finetune template, stop the runs of this server's kernels (after a confirmation naming them),
 * open a run's panel in the current notebook.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Clipboard, Dialog, ICommandPalette, Notification, showDialog } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { addIcon, stopIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';
import type { IRun } from './api';
import { CATEGORY, CommandIDs, PluginIDs } from './constants';
import { leftAlone, plural, stopAllPlan } from './format';
import { finetuneIcon } from './icons';
import { RunsModel } from './model';
import { IRunsModel } from './tokens';

/** The inserted cell: README's 30-second example (a hub model, a hub dataset; edit model/data to taste). */
export const TEMPLATE = `%%finetune my_run
model: bert-base-uncased            # hub id, local directory, or {{my_model}} from the notebook
data:
  train: imdb:train[:2000]          # hub dataset + split slice, a csv/json/jsonl/parquet path, or {{df}}
  eval: imdb:test[:500]
epochs: 3
batch_size: 16
lr: 2e-5
freeze: bottom 8                    # also: 8 | [embeddings, blocks.0-7] | all_but_head | 0.66
`;

/** `%finetune show NAME` (names are plain identifiers-ish; anything else is quoted for the magic's shlex). */
export function showLine(name: string): string {
  return /^[\w.-]+$/.test(name) ? `%finetune show ${name}` : `%finetune show '${name.replace(/'/g, "'\\''")}'`;
}

/** Puts `source` into the active cell when it is an empty code cell, else into a new code cell below it. */
function insertCell(panel: NotebookPanel, source: string): void {
  const notebook = panel.content;
  const active = notebook.activeCell;
  if (!active || active.model.type !== 'code' || active.model.sharedModel.getSource().trim() !== '') {
    NotebookActions.insertBelow(notebook);
    if (notebook.activeCell && notebook.activeCell.model.type !== 'code') {
      NotebookActions.changeCellType(notebook, 'code');
    }
  }
  notebook.activeCell?.model.sharedModel.setSource(source.replace(/\n$/, ''));
}

const MAX_NAMES = 12;

/** The body of the Stop-all confirmation: the runs it stops, by name, and what it leaves alone. */
class StopAllBody extends Widget {
  constructor(runs: IRun[], left: string) {
    super();
    this.addClass('nbf-StopAllDialog');
    const intro = document.createElement('p');
    const what = runs.length === 1 ? 'this run' : `these ${runs.length} runs`;
    intro.textContent = `Checkpoint, then stop ${what} of this server's kernels:`;
    const list = document.createElement('ul');
    const shown = runs.length > MAX_NAMES ? runs.slice(0, MAX_NAMES - 1) : runs;
    for (const run of shown) {
      const li = document.createElement('li');
      li.textContent = run.name;
      li.title = run.run_dir;
      list.append(li);
    }
    if (shown.length < runs.length) {
      const li = document.createElement('li');
      li.textContent = `and ${runs.length - shown.length} more`;
      list.append(li);
    }
    this.node.append(intro, list);
    if (left) {
      const note = document.createElement('p');
      note.className = 'nbf-StopAllDialog-note';
      note.textContent = left.trim();
      this.node.append(note);
    }
  }
}

export const commandsPlugin: JupyterFrontEndPlugin<void> = {
  id: PluginIDs.commands,
  description: 'Insert %%finetune template, Stop all runs, Open run panel.',
  autoStart: true,
  requires: [IRunsModel],
  optional: [INotebookTracker, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    model: RunsModel,
    notebooks: INotebookTracker | null,
    palette: ICommandPalette | null
  ) => {
    const current = (): NotebookPanel | null => notebooks?.currentWidget ?? null;

    app.commands.addCommand(CommandIDs.insertTemplate, {
      label: 'Insert %%finetune Template',
      caption: 'Insert a cell with a minimal %%finetune config',
      icon: args => (args.toolbar ? finetuneIcon : addIcon),
      isEnabled: () => current() !== null,
      execute: () => {
        const panel = current();
        if (!panel) {
          return;
        }
        insertCell(panel, TEMPLATE);
        panel.content.mode = 'edit';
      }
    });

    app.commands.addCommand(CommandIDs.stopAll, {
      label: 'Stop All Fine-tune Runs',
      caption: "Send stop (checkpoint, then stop) to the live runs of this server's kernels, after a confirmation",
      icon: stopIcon,
      execute: async () => {
        await model.refresh(); // count what is live now, not at the last poll
        const { stop, others } = stopAllPlan(model.runs);
        const left = others.length ? ` ${leftAlone(others.length)}` : '';
        if (stop.length === 0) {
          Notification.info(`No live run of this server's kernels to stop.${left}`, { autoClose: 6000 });
          return;
        }
        const answer = await showDialog({
          title: `Stop ${plural(stop.length, 'run')}?`,
          body: new StopAllBody(stop, left),
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: `Stop ${plural(stop.length, 'run')}` })]
        });
        if (!answer.button.accept) {
          return;
        }
        try {
          const stopped = await model.stopAll(stop.map(r => r.id));
          Notification.info(stopped.length ? `Stop sent to ${plural(stopped.length, 'run')}` : 'No live run to stop', {
            autoClose: 4000
          });
        } catch (err) {
          Notification.error(`Stop all failed: ${err instanceof Error ? err.message : String(err)}`, {
            autoClose: 8000
          });
        }
      }
    });

    app.commands.addCommand(CommandIDs.openPanel, {
      label: args => (args.name ? `Open Panel of ${args.name}` : 'Open Fine-tune Run Panel'),
      caption: 'Insert and run `%finetune show NAME` in the current notebook',
      execute: async args => {
        const name = String(args.name ?? '');
        if (!name) {
          return;
        }
        const line = showLine(name);
        const panel = current();
        if (!panel) {
          Clipboard.copyToSystem(line);
          Notification.info(`No notebook open: copied "${line}" to the clipboard`, { autoClose: 5000 });
          return;
        }
        insertCell(panel, line);
        await NotebookActions.run(panel.content, panel.sessionContext);
      }
    });

    if (palette) {
      for (const command of [CommandIDs.insertTemplate, CommandIDs.stopAll]) {
        palette.addItem({ command, category: CATEGORY });
      }
    }
  }
};
