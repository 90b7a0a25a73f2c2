// The REST API of pxb-server, typed by api-types.ts (generated from docs/openapi.json).
import type { components } from './api-types';
import { bearer, recoverFrom401, signedOut } from './auth';

export type S = components['schemas'];
export type WhoAmI = S['WhoAmI'];
export type Role = S['Role'];
export type Preferences = S['PreferencesView'];
export type Tab = S['Tab'];
export type TimeBracket = S['TimeBracket'];
export type FleetStatus = S['FleetStatusView'];
export type FleetEntry = S['FleetEntry'];
export type ClusterState = S['ClusterState'];
export type ClusterRecord = S['ClusterRecord'];
export type DiscoveryView = S['DiscoveryView'];
export type CreateDiscovery = S['CreateDiscovery'];
export type LocationView = S['LocationView'];
export type LocationStatus = S['LocationStatus'];
export type CreateLocation = S['CreateLocation'];
export type ClusterSelector = S['ClusterSelector'];
export type ClusterSelectorInput = S['ClusterSelectorInput'];
export type BackupRecord = S['BackupRecord'];
export type BackupPhase = S['BackupPhase'];
export type RestoreRecord = S['RestoreRecord'];
export type RestoreRequest = S['RestoreRequest'];
export type ScheduleRecord = S['ScheduleRecord'];
export type ScheduleRequest = S['ScheduleRequest'];
export type SchedulePolicy = S['SchedulePolicy'];
export type SchedulePolicyInput = S['SchedulePolicyInput'];
export type ErrorBody = S['ErrorBody'];
export interface Page<T> {
  items: T[];
  next?: string | null;
}

/** An error of the API: its status and the ErrorBody's code and message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
  get forbidden(): boolean {
    return this.status === 403;
  }
}

/** A message for humans: "Not allowed: …" for a 403. */
export function describe(e: unknown): string {
  if (e instanceof ApiError) {
    if (e.status === 403) return `Not allowed: ${e.message}`;
    return e.message || `${e.status} ${e.code}`;
  }
  if (e instanceof Error) return e.message;
  return String(e);
}

async function errorOf(r: Response): Promise<ApiError> {
  let code = 'http_' + r.status;
  let message = r.statusText || `HTTP ${r.status}`;
  try {
    const b = (await r.json()) as Partial<ErrorBody>;
    if (b && b.error) {
      code = b.error.code;
      message = b.error.message;
    }
  } catch {
    // not an ErrorBody
  }
  return new ApiError(r.status, code, message);
}

type Query = Record<string, string | number | boolean | null | undefined>;

export function qs(q?: Query): string {
  if (!q) return '';
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  const s = p.toString();
  return s ? '?' + s : '';
}

/** One call of the API with the session's bearer token; a 401 ends the session. */
export async function call<T>(method: string, path: string, body?: unknown, signal?: AbortSignal, retried = false): Promise<T> {
  const token = bearer();
  const headers: Record<string, string> = { accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: 'no-store',
    credentials: 'omit',
  });
  if (r.status === 401) {
    const e = await errorOf(r);
    // An answer to an older session's token ends nothing; an expired token renews once.
    const next = await recoverFrom401(token);
    if (next === 'retry' && !retried) return call<T>(method, path, body, signal, true);
    if (next !== 'stale') signedOut(e.message);
    throw e;
  }
  if (!r.ok) throw await errorOf(r);
  if (r.status === 204) return undefined as T;
  const text = await r.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

export const get = <T>(path: string, q?: Query, signal?: AbortSignal) => call<T>('GET', path + qs(q), undefined, signal);
export const post = <T>(path: string, body?: unknown) => call<T>('POST', path, body ?? {});
export const put = <T>(path: string, body: unknown) => call<T>('PUT', path, body);
export const del = <T>(path: string, q?: Query) => call<T>('DELETE', path + qs(q));

export const enc = encodeURIComponent;
export const orgPath = (org: string, rest = '') => `/v1/orgs/${enc(org)}${rest}`;

/** Every page of a list (cursor `after`), up to `max` items. */
export async function all<T>(path: string, q: Query = {}, max = 20000, signal?: AbortSignal): Promise<T[]> {
  const out: T[] = [];
  let after: string | undefined;
  for (;;) {
    const page = await get<Page<T>>(path, { ...q, limit: 1000, after }, signal);
    out.push(...page.items);
    if (!page.next || out.length >= max) return out;
    after = page.next;
  }
}
