import type { ServerConnection } from '@jupyterlab/services';
import { ApiError, joinUrl, RunsApi } from '../api';

const settings = { baseUrl: 'http://localhost:8888/lab-base/' } as unknown as ServerConnection.ISettings;

function fakeRequest(responses: Array<Response | Error>) {
  const calls: Array<{ url: string; init: RequestInit; settings: ServerConnection.ISettings }> = [];
  const fn = jest.fn(async (url: string, init: RequestInit, s: ServerConnection.ISettings) => {
    calls.push({ url, init, settings: s });
    const next = responses.shift();
    if (next instanceof Error) {
      throw next;
    }
    return next as Response;
  });
  return { fn, calls };
}

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

describe('joinUrl', () => {
  it('joins with single slashes', () => {
    expect(joinUrl('http://h/base/', '/nb-finetune/api/', 'runs')).toBe('http://h/base/nb-finetune/api/runs');
    expect(joinUrl('/', 'nb-finetune/api', 'stop-all')).toBe('/nb-finetune/api/stop-all');
  });
});

describe('RunsApi', () => {
  it('lists runs with a GET under the base URL, through the injected request (settings passed on)', async () => {
    const { fn, calls } = fakeRequest([json({ runs: [{ id: 'a', name: 'r' }], time: 1 })]);
    const api = new RunsApi(settings, fn);
    const answer = await api.listRuns();
    expect(answer.runs[0].name).toBe('r');
    expect(calls).toHaveLength(1);
    expect(calls[0].url).toBe('http://localhost:8888/lab-base/nb-finetune/api/runs');
    expect(calls[0].init.method).toBe('GET');
    expect(calls[0].settings).toBe(settings);
  });

  it('posts control commands as JSON {cmd, args} to runs/<id>/control', async () => {
    const { fn, calls } = fakeRequest([json({ seq: 7, id: '0123456789abcdef' }, 202)]);
    const api = new RunsApi(settings, fn);
    const reply = await api.control('0123456789abcdef', 'set', { learning_rate: 1e-5 });
    expect(reply.seq).toBe(7);
    expect(calls[0].url).toBe('http://localhost:8888/lab-base/nb-finetune/api/runs/0123456789abcdef/control');
    expect(calls[0].init.method).toBe('POST');
    expect(JSON.parse(calls[0].init.body as string)).toEqual({ cmd: 'set', args: { learning_rate: 1e-5 } });
    expect((calls[0].init.headers as Record<string, string>)['Content-Type']).toBe('application/json');
  });

  it('escapes ids in the path', async () => {
    const { fn, calls } = fakeRequest([json({ seq: 1, id: 'x' }, 202)]);
    await new RunsApi(settings, fn).control('../x', 'stop');
    expect(calls[0].url).toBe('http://localhost:8888/lab-base/nb-finetune/api/runs/..%2Fx/control');
  });

  it('posts stop-all with its scope and the confirmed ids', async () => {
    const { fn, calls } = fakeRequest([json({ stopped: ['a'], skipped: ['c'] }), json({ stopped: [] })]);
    const api = new RunsApi(settings, fn);
    expect(await api.stopAll({ scope: 'server', ids: ['a', 'b'] })).toEqual({ stopped: ['a'], skipped: ['c'] });
    expect(calls[0].url).toBe('http://localhost:8888/lab-base/nb-finetune/api/stop-all');
    expect(calls[0].init.method).toBe('POST');
    expect(JSON.parse(calls[0].init.body as string)).toEqual({ scope: 'server', ids: ['a', 'b'] });
    await api.stopAll();
    expect(JSON.parse(calls[1].init.body as string)).toEqual({}); // the server's default scope: its own kernels
  });

  it.each([
    [409, { message: 'run is not alive' }, 'the run is not alive: run is not alive'],
    [400, { message: "bad field 'cmd'" }, "bad request: bad field 'cmd'"],
    [403, '<html>Forbidden</html>', 'not authorised (log in to Jupyter again)'],
    [404, { message: 'unknown run' }, 'not found (is the nb_finetune server extension enabled?): unknown run'],
    [502, 'gateway down', 'HTTP 502: gateway down']
  ])('maps HTTP %i to an ApiError with a readable message', async (status, body, message) => {
    const response =
      typeof body === 'string' ? new Response(body, { status }) : json(body, status as number);
    const { fn } = fakeRequest([response]);
    const err = await new RunsApi(settings, fn).control('a', 'stop').catch(e => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(status);
    expect(err.message).toBe(message);
  });

  it('maps a network failure to status 0', async () => {
    const { fn } = fakeRequest([new TypeError('Failed to fetch')]);
    const err = await new RunsApi(settings, fn).listRuns().catch(e => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(0);
    expect(err.message).toBe('cannot reach the Jupyter server: Failed to fetch');
  });

  it('rejects a 200 that is not JSON', async () => {
    const { fn } = fakeRequest([new Response('<html></html>', { status: 200 })]);
    await expect(new RunsApi(settings, fn).listRuns()).rejects.toThrow('not JSON');
  });
});
