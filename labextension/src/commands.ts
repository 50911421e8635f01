/** Commands: insert a %%finetune template, stop all runs, open a run's panel in the current notebook. */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Clipboard, ICommandPalette, Notification } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { addIcon, stopIcon } from '@jupyterlab/ui-components';
import { CATEGORY, CommandIDs, PluginIDs } from './constants';
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
      caption: 'Send stop (checkpoint, then stop) to every live run',
      icon: stopIcon,
      execute: async () => {
        try {
          const stopped = await model.stopAll();
          Notification.info(stopped.length ? `Stop sent to ${stopped.length} run(s)` : 'No live run to stop', {
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
