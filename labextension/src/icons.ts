import { LabIcon } from '@jupyterlab/ui-components';

/** A dial with a tuning needle: the runs sidebar and status bar icon (theme-aware through jp-icon3). */
const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 17h3v3H3zm5-5h3v8H8zm5-4h3v12h-3zm5-5h3v17h-3z"/>
  </g>
</svg>`;

export const finetuneIcon = new LabIcon({ name: 'nb-finetune:runs', svgstr: svg });
