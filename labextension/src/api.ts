/**
 * A small client of the nb_finetune server extension (`<base_url>nb-finetune/api/`).
 *
 * The transport is injected: the plugins pass `ServerConnection.makeRequest` (which adds the token and the
 * XSRF header), the unit tests pass a fake. Only types are imported from `@jupyterlab/services` here.
 */
import type { ServerConnection } from '@jupyterlab/services';
import { API_PATH } from './constants';

export type RunState =
  | 'queued'
  | 'starting'
  | 'training'
  | 'paused'
  | 'stopping'
  | 'finished'
  | 'stopped'
  | 'failed'
  | 'dead';

export interface IBestMetric {
  name: string;
  value: number;
}

export interface IRun {
  id: string;
  name: string;
  run_dir: string;
  state: RunState | string;
  reason?: string | null;
  alive: boolean;
  heartbeat_age_s?: number | null;
  pid?: number | null;
  step: number;
  total_steps?: number | null;
  epoch?: number | null;
  eta_s?: number | null;
  samples_per_s?: number | null;
  loss?: number | null;
  /** The last logged learning rate (base x schedule factor). */
  lr?: number | null;
  /** The schedule's base learning rate: what Set LR replaces (the last applied `set`, else the config's lr). */
  base_lr?: number | null;
  /** The id of this server's kernel that runs it; null for a run of another process, server or user. */
  kernel_id?: string | null;
  best_metric?: IBestMetric | null;
  loss_history?: number[];
  last_command: number;
  pending?: number[];
  model?: string | null;
  started?: number | string | null;
  finished?: number | string | null;
}

export interface ICommandRecord {
  seq: number;
  cmd: string;
  acknowledged: boolean;
  [key: string]: unknown;
}

export interface IRunDetail extends IRun {
  commands: ICommandRecord[];
}

export interface IRunList {
  runs: IRun[];
  time: number;
}

export type ControlCommand = 'stop' | 'pause' | 'resume' | 'checkpoint' | 'abort' | 'set';

export interface IControlReply {
  seq: number;
  id: string;
}

export type StopScope = 'server' | 'all';

export interface IStopAllReply {
  stopped: string[];
  skipped?: string[];
}

export type RequestFn = (url: string, init: RequestInit, settings: ServerConnection.ISettings) => Promise<Response>;

/** An error answer of the server (or no answer at all: `status` 0), with a message fit to show inline. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

const STATUS_TEXT: { [status: number]: string } = {
  400: 'bad request',
  403: 'not authorised (log in to Jupyter again)',
  404: 'not found (is the nb_finetune server extension enabled?)',
  409: 'the run is not alive',
  500: 'server error'
};

/** Joins URL parts with exactly one slash between them. */
export function joinUrl(...parts: string[]): string {
  return parts
    .filter(p => p !== '')
    .map((p, i) => (i === 0 ? p.replace(/\/+$/, '') : p.replace(/^\/+|\/+$/g, '')))
    .join('/');
}

/** Turns a non-2xx response into an `ApiError` whose message says what went wrong. */
export async function errorFromResponse(response: Response): Promise<ApiError> {
  let detail = '';
  try {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      detail = typeof body?.message === 'string' ? body.message : typeof body?.reason === 'string' ? body.reason : '';
    } catch {
      detail = text.length < 200 && !/<html/i.test(text) ? text.trim() : '';
    }
  } catch {
    detail = '';
  }
  const generic = STATUS_TEXT[response.status] ?? `HTTP ${response.status}`;
  return new ApiError(response.status, detail ? `${generic}: ${detail}` : generic);
}

export class RunsApi {
  constructor(
    readonly settings: ServerConnection.ISettings,
    private readonly request: RequestFn
  ) {}

  url(path: string): string {
    return joinUrl(this.settings.baseUrl, API_PATH, path);
  }

  private async call<T>(path: string, init: RequestInit = {}): Promise<T> {
    let response: Response;
    try {
      response = await this.request(this.url(path), init, this.settings);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      throw new ApiError(0, `cannot reach the Jupyter server: ${reason}`);
    }
    if (!response.ok) {
      throw await errorFromResponse(response);
    }
    try {
      return (await response.json()) as T;
    } catch {
      throw new ApiError(response.status, 'the server answered with something that is not JSON');
    }
  }

  private post<T>(path: string, body: unknown): Promise<T> {
    return this.call<T>(path, {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'Content-Type': 'application/json' }
    });
  }

  listRuns(): Promise<IRunList> {
    return this.call<IRunList>('runs', { method: 'GET' });
  }

  getRun(id: string): Promise<IRunDetail> {
    return this.call<IRunDetail>(`runs/${encodeURIComponent(id)}`, { method: 'GET' });
  }

  control(id: string, cmd: ControlCommand, args: { [key: string]: number } = {}): Promise<IControlReply> {
    return this.post<IControlReply>(`runs/${encodeURIComponent(id)}/control`, { cmd, args });
  }

  /**
   * Stops the live runs of this server's kernels (`scope: 'all'`: every live run), only those in `ids` when
   * given. `skipped`: the live runs left alone because another process runs them.
   */
  stopAll(options: { scope?: StopScope; ids?: string[] } = {}): Promise<IStopAllReply> {
    return this.post<IStopAllReply>('stop-all', options);
  }
}
