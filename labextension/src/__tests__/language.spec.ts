import { EditorState, StateField } from '@codemirror/state';
import { finetuneLanguage, isFinetuneLine, isFinetuneSource } from '../language';

describe('isFinetuneLine', () => {
  it.each([
    ['%%finetune', true],
    ['%%finetune sentiment', true],
    ['%%finetune\tname --wait', true],
    ['%%finetuner', false],
    ['%%finetune_x', false],
    [' %%finetune name', false],
    ['%finetune runs', false],
    ['# %%finetune', false],
    ['', false]
  ])('%j -> %s', (line, expected) => {
    expect(isFinetuneLine(line)).toBe(expected);
  });

  it('looks at the first line only', () => {
    expect(isFinetuneSource('%%finetune a\nmodel: x')).toBe(true);
    expect(isFinetuneSource('%%finetune a\r\nmodel: x')).toBe(true);
    expect(isFinetuneSource('x = 1\n%%finetune a')).toBe(false);
  });
});

/** A stand-in for the YAML language: a state field we can see in the state. */
const fakeYaml = StateField.define<string>({ create: () => 'yaml', update: v => v });

describe('finetuneLanguage', () => {
  function make(doc: string, initial = doc) {
    const lang = finetuneLanguage(fakeYaml, initial);
    return { lang, state: EditorState.create({ doc, extensions: lang.extension }) };
  }
  const hasYaml = (state: EditorState) => state.field(fakeYaml, false) === 'yaml';

  it('is on for a %%finetune document from the start', () => {
    const { lang, state } = make('%%finetune a\nepochs: 3');
    expect(lang.isActive(state)).toBe(true);
    expect(hasYaml(state)).toBe(true);
  });

  it('is off for other documents', () => {
    const { lang, state } = make('import torch');
    expect(lang.isActive(state)).toBe(false);
    expect(hasYaml(state)).toBe(false);
  });

  it('follows edits of the first line both ways, in the same transaction', () => {
    let { lang, state } = make('epochs: 3');
    state = state.update({ changes: { from: 0, insert: '%%finetune run\n' } }).state;
    expect(lang.isActive(state)).toBe(true);
    expect(hasYaml(state)).toBe(true);
    // editing the body keeps it on
    state = state.update({ changes: { from: state.doc.length, insert: '\nlr: 1e-5' } }).state;
    expect(lang.isActive(state)).toBe(true);
    // breaking the magic turns it off
    state = state.update({ changes: { from: 2, to: 3, insert: 'F' } }).state;
    expect(state.doc.line(1).text).toBe('%%Finetune run');
    expect(lang.isActive(state)).toBe(false);
    expect(hasYaml(state)).toBe(false);
  });

  it('switches when the text arrives after creation (the editor starts empty, the model fills it)', () => {
    let { lang, state } = make('', '');
    expect(lang.isActive(state)).toBe(false);
    state = state.update({ changes: { from: 0, insert: '%%finetune x\nmodel: m' } }).state;
    expect(lang.isActive(state)).toBe(true);
  });
});
