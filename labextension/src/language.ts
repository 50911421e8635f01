/**
 * Per-cell language switch for `%%finetune` cells.
 *
 * JupyterLab chooses one language per editor (from the kernel's mime type), so the YAML body of a `%%finetune`
 * cell would be highlighted as Python. This CodeMirror 6 extension watches the document's first line and, while it
 * is a `%%finetune` line, puts the YAML language in a compartment with the highest precedence (CodeMirror's
 * `language` facet takes the first value, so it wins over JupyterLab's own); otherwise the compartment is empty
 * and JupyterLab's language applies again. The switch happens in a transaction extender, i.e. in the same
 * transaction as the edit that changes the first line, for typing, pasting, undo and collaborative updates alike.
 */
import { Compartment, EditorState, Extension, Prec, Text } from '@codemirror/state';
import { MAGIC } from './constants';

/** Whether a cell's first line makes it a `%%finetune` cell (`%%finetune`, then the end or whitespace). */
export function isFinetuneLine(firstLine: string): boolean {
  return firstLine.startsWith(MAGIC) && (firstLine.length === MAGIC.length || /\s/.test(firstLine[MAGIC.length]));
}

/** Whether a whole source text (string or CodeMirror `Text`) starts with a `%%finetune` line. */
export function isFinetuneSource(source: string | Text): boolean {
  const first = typeof source === 'string' ? source.split('\n', 1)[0] : source.line(1).text;
  return isFinetuneLine(first.replace(/\r$/, ''));
}

export interface IFinetuneLanguage {
  /** The extension to add to an editor. */
  extension: Extension;
  /** The compartment holding the YAML language (empty when the cell is not a `%%finetune` cell). */
  compartment: Compartment;
  /** Whether the YAML language is on in `state`. */
  isActive(state: EditorState): boolean;
}

/**
 * Builds the switch for one editor.
 *
 * @param yaml The YAML language support (JupyterLab's, from `IEditorLanguageRegistry`, so that no second copy of
 *   CodeMirror is bundled).
 * @param initialSource The editor's text at creation, if known (the switch also follows every later change).
 */
export function finetuneLanguage(yaml: Extension, initialSource = ''): IFinetuneLanguage {
  const compartment = new Compartment();
  const on = Prec.highest(yaml);
  const isActive = (state: EditorState) => compartment.get(state) === on;
  const extender = EditorState.transactionExtender.of(tr => {
    if (!tr.docChanged) {
      return null;
    }
    const want = isFinetuneSource(tr.newDoc);
    if (want === isActive(tr.startState)) {
      return null;
    }
    return { effects: compartment.reconfigure(want ? on : []) };
  });
  return {
    extension: [compartment.of(isFinetuneSource(initialSource) ? on : []), extender],
    compartment,
    isActive
  };
}
