import { JupyterFrontEndPlugin } from '@jupyterlab/application';
import { commandsPlugin } from './commands';
import { highlightPlugin } from './highlight';
import { runsPlugin } from './runs';
import { sidebarPlugin } from './sidebar';
import { statusbarPlugin } from './statusbar';

const plugins: JupyterFrontEndPlugin<any>[] = [runsPlugin, highlightPlugin, sidebarPlugin, statusbarPlugin, commandsPlugin];

export default plugins;
