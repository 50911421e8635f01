import { Token } from '@lumino/coreutils';
import type { RunsModel } from './model';

/** The shared poller of `GET runs`: the sidebar, the status bar and the commands all read the same model. */
export const IRunsModel = new Token<RunsModel>('nb-finetune-labextension:IRunsModel', 'The nb_finetune runs model.');
