/** Plugin ids, command ids and other constants shared by the extension's plugins. */

export const PACKAGE = 'nb-finetune-labextension';

export namespace PluginIDs {
  export const highlight = `${PACKAGE}:highlight`;
  export const runs = `${PACKAGE}:runs`;
  export const sidebar = `${PACKAGE}:sidebar`;
  export const statusbar = `${PACKAGE}:statusbar`;
  export const commands = `${PACKAGE}:commands`;
}

export namespace CommandIDs {
  export const insertTemplate = 'nb-finetune:insert-template';
  export const stopAll = 'nb-finetune:stop-all';
  export const openPanel = 'nb-finetune:open-panel';
  export const showRuns = 'nb-finetune:show-runs';
}

/** The server extension's REST base, relative to the server's base URL (see notes/server_api.md). */
export const API_PATH = 'nb-finetune/api';

/** Poll interval while the runs sidebar is visible. */
export const POLL_VISIBLE_MS = 2000;
/** Poll interval while only the status bar item needs data. */
export const POLL_BACKGROUND_MS = 5000;

/** The cell magic whose body the highlighter shows as YAML. */
export const MAGIC = '%%finetune';

/** DOM id of the runs sidebar (also used by the browser tests). */
export const SIDEBAR_ID = 'nb-finetune-runs';

export const CATEGORY = 'Fine-tuning';
