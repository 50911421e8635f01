/** Provides the shared runs model (one poller of the server extension for every view). */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ServerConnection } from '@jupyterlab/services';
import { RunsApi } from './api';
import { PluginIDs } from './constants';
import { RunsModel } from './model';
import { IRunsModel } from './tokens';

export const runsPlugin: JupyterFrontEndPlugin<RunsModel> = {
  id: PluginIDs.runs,
  description: 'Polls the nb_finetune server extension for the runs of this user.',
  autoStart: true,
  provides: IRunsModel,
  activate: (app: JupyterFrontEnd): RunsModel => {
    const settings = app.serviceManager?.serverSettings ?? ServerConnection.makeSettings();
    return new RunsModel(new RunsApi(settings, ServerConnection.makeRequest));
  }
};
