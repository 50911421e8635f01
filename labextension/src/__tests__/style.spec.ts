/**
 * The extension's CSS takes every colour from JupyterLab's theme variables (`--jp-*`), so the sidebar and the status
 * bar follow the light, dark and high-contrast themes. A fixed colour (`#fff`, `rgb(...)`, `white`, or a fallback
 * inside `var(--jp-x, #fff)`) in a colour property fails this test.
 */
import { readFileSync } from 'fs';
import { join } from 'path';

const CSS = readFileSync(join(__dirname, '..', '..', 'style', 'base.css'), 'utf8');
const COLOUR_PROPS = /^(color|background(-color)?|border(-\w+)?(-color)?|fill|stroke|box-shadow|outline(-color)?)$/;

/** Every `property: value` declaration of a stylesheet (comments dropped). */
function declarations(css: string): Array<[string, string]> {
  const body = css.replace(/\/\*[\s\S]*?\*\//g, '');
  const out: Array<[string, string]> = [];
  for (const block of body.matchAll(/\{([^}]*)\}/g)) {
    for (const decl of block[1].split(';')) {
      const cut = decl.indexOf(':');
      if (cut > 0) {
        out.push([decl.slice(0, cut).trim(), decl.slice(cut + 1).trim()]);
      }
    }
  }
  return out;
}

/** The fixed colours in a value once the `var(--jp-*)` references are taken out ([] when it only uses the theme). */
function fixedColours(value: string): string[] {
  const rest = value.replace(/var\(--jp-[\w-]+\)/g, '');
  return rest.match(/#[0-9a-f]{3,8}\b|\b(rgba?|hsla?)\(|\b(white|black|gr[ae]y|red|green|blue|orange|yellow)\b/gi) ?? [];
}

describe('theme colours', () => {
  it('finds fixed colours where there are some (control)', () => {
    expect(fixedColours('#fff')).toEqual(['#fff']);
    expect(fixedColours('var(--jp-layout-color1, #fff)')).toEqual(['#fff']);
    expect(fixedColours('1px solid rgb(0, 0, 0)')).toEqual(['rgb(']);
    expect(fixedColours('white')).toEqual(['white']);
    expect(fixedColours('var(--jp-border-width) solid var(--jp-border-color2)')).toEqual([]);
  });

  it('uses only --jp-* variables for colours in style/base.css', () => {
    const decls = declarations(CSS).filter(([prop]) => COLOUR_PROPS.test(prop));
    expect(decls.length).toBeGreaterThan(20); // the sidebar, its badges, the status bar
    const fixed = decls.filter(([, value]) => fixedColours(value).length).map(([p, v]) => `${p}: ${v}`);
    expect(fixed).toEqual([]);
  });

  it('styles the status bar item and its progress bar from the theme', () => {
    const rules = (sel: string) => [...CSS.matchAll(new RegExp(`${sel.replace('.', '\\.')}\\s*\\{([^}]*)\\}`, 'g'))];
    const text = (sel: string) => rules(sel).map(m => m[1]).join(';');
    expect(text('.nbf-Status')).toMatch(/color:\s*var\(--jp-ui-font-color1\)/);
    expect(text('.nbf-Status-fill')).toMatch(/background:\s*var\(--jp-brand-color1\)/);
    expect(text('.nbf-Status-bar')).toMatch(/background:\s*var\(--jp-layout-color3\)/);
  });
});
