/**
 * Extra marks on top of the YAML highlighting of `%%finetune` cells, for what JupyterLab's YAML mode leaves plain:
 * numbers in any notation (`5e-5`, `1E-3`, `.5`, `1_000`), freeze specs (the value of `freeze:`), and the magic line
 * itself (`%%finetune`, the run's name, its `--flags`). Colours come from JupyterLab's editor theme variables
 * (style/base.css), so they follow the light and dark themes.
 */
import { RangeSetBuilder } from '@codemirror/state';
import { Decoration, DecorationSet, EditorView, ViewPlugin, ViewUpdate } from '@codemirror/view';
import { isFinetuneSource } from './language';

export type FinetuneTokenKind = 'magic' | 'name' | 'flag' | 'number' | 'spec';

export interface IFinetuneToken {
  from: number;
  to: number;
  kind: FinetuneTokenKind;
}

const NUMBER = /^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$/;

/** The marks of one line (`first`: the cell's first line, the magic line); offsets within the line. */
export function lineTokens(text: string, first: boolean): IFinetuneToken[] {
  const out: IFinetuneToken[] = [];
  if (first) {
    const m = /^(%%finetune)(\s+([^\s-][^\s]*))?/.exec(text);
    if (m) {
      out.push({ from: 0, to: m[1].length, kind: 'magic' });
      if (m[3]) {
        const at = text.indexOf(m[3], m[1].length);
        out.push({ from: at, to: at + m[3].length, kind: 'name' });
      }
      const flags = /(^|\s)(--?[A-Za-z][\w-]*)/g;
      let f: RegExpExecArray | null;
      while ((f = flags.exec(text)) !== null) {
        const at = f.index + f[1].length;
        out.push({ from: at, to: at + f[2].length, kind: 'flag' });
      }
    }
    return out;
  }
  const comment = text.search(/(^|\s)#/);
  const body = comment >= 0 ? text.slice(0, comment) : text;
  // `key: value` or a list item `- value`
  const kv = /^(\s*(?:-\s+)?[\w.-]+\s*:\s+|\s*-\s+)(.+?)\s*$/.exec(body);
  if (!kv) {
    return out;
  }
  const start = kv[1].length;
  const value = kv[2];
  if (/^\s*freeze\s*:/.test(body)) {
    out.push({ from: start, to: start + value.length, kind: 'spec' });
  } else if (NUMBER.test(value)) {
    out.push({ from: start, to: start + value.length, kind: 'number' });
  }
  return out;
}

const marks: Record<FinetuneTokenKind, Decoration> = {
  magic: Decoration.mark({ class: 'nbft-tok-magic' }),
  name: Decoration.mark({ class: 'nbft-tok-name' }),
  flag: Decoration.mark({ class: 'nbft-tok-flag' }),
  number: Decoration.mark({ class: 'nbft-tok-number' }),
  spec: Decoration.mark({ class: 'nbft-tok-spec' })
};

function build(view: EditorView): DecorationSet {
  const doc = view.state.doc;
  if (!isFinetuneSource(doc)) {
    return Decoration.none;
  }
  const builder = new RangeSetBuilder<Decoration>();
  for (const { from, to } of view.visibleRanges) {
    let line = doc.lineAt(from);
    for (;;) {
      const tokens = lineTokens(line.text, line.number === 1).sort((a, b) => a.from - b.from);
      for (const t of tokens) {
        builder.add(line.from + t.from, line.from + t.to, marks[t.kind]);
      }
      if (line.to >= to || line.number >= doc.lines) {
        break;
      }
      line = doc.line(line.number + 1);
    }
  }
  return builder.finish();
}

/** The CodeMirror extension: marks in the visible part of a `%%finetune` cell, nothing in other cells. */
export const finetuneTokens = ViewPlugin.fromClass(
  class {
    decorations: DecorationSet;
    constructor(view: EditorView) {
      this.decorations = build(view);
    }
    update(u: ViewUpdate) {
      if (u.docChanged || u.viewportChanged) {
        this.decorations = build(u.view);
      }
    }
  },
  { decorations: v => v.decorations }
);
