/** Registers the `%%finetune` → YAML language switch with every CodeMirror editor. */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { EditorExtensionRegistry, IEditorExtensionRegistry, IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import { PluginIDs } from './constants';
import { finetuneLanguage } from './language';
import { finetuneTokens } from './tokens_yaml';

export const highlightPlugin: JupyterFrontEndPlugin<void> = {
  id: PluginIDs.highlight,
  description: 'Highlights the body of %%finetune cells as YAML.',
  autoStart: true,
  requires: [IEditorExtensionRegistry, IEditorLanguageRegistry],
  activate: async (_app: JupyterFrontEnd, extensions: IEditorExtensionRegistry, languages: IEditorLanguageRegistry) => {
    // JupyterLab's own YAML (shared CodeMirror instance); loaded once, before any editor needs it.
    const yaml = await languages.getLanguage('yaml');
    if (!yaml?.support) {
      console.warn('nb-finetune: JupyterLab has no YAML language; %%finetune cells keep their highlighting');
      return;
    }
    const support = yaml.support;
    extensions.addExtension({
      name: 'nb-finetune:finetune-yaml',
      factory: ({ model }) =>
        EditorExtensionRegistry.createImmutableExtension([
          finetuneLanguage(support, model.sharedModel.getSource()).extension,
          finetuneTokens
        ])
    });
  }
};
