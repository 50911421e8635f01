import { lineTokens } from '../tokens_yaml';

const kinds = (text: string, first = false) => lineTokens(text, first).map(t => [t.kind, text.slice(t.from, t.to)]);

describe('%%finetune marks', () => {
  it('marks numbers in any notation, and only numbers', () => {
    for (const v of ['5e-5', '1E-3', '0.00006', '.5', '3', '1_000', '-2', '6e-5']) {
      expect(kinds(`lr: ${v}`)).toEqual([['number', v]]);
    }
    expect(kinds('lr: 5e-5  # small')).toEqual([['number', '5e-5']]);
    expect(kinds('model: bert-base-uncased')).toEqual([]);
    expect(kinds('eval_every: epoch')).toEqual([]);
    expect(kinds('data:')).toEqual([]);
  });

  it('marks freeze specs', () => {
    expect(kinds('freeze: embeddings, blocks.0-3')).toEqual([['spec', 'embeddings, blocks.0-3']]);
  });

  it('marks the magic line: the magic, the run name, the flags', () => {
    expect(kinds('%%finetune my_run --wait --paused', true)).toEqual([
      ['magic', '%%finetune'],
      ['name', 'my_run'],
      ['flag', '--wait'],
      ['flag', '--paused']
    ]);
    expect(kinds('lr: 1e-5', true)).toEqual([]);
  });
});
