// Signing in: one-time codes (`#/signin?code=…`, what `pxb demo` prints) and OpenID Connect
// (authorization code flow with PKCE, a public client). Tokens live in memory only: a reload
// loses them and shows the sign-in page. sessionStorage holds the PKCE verifier, state and nonce
// only while the browser is away at the issuer, and they are deleted on return.
import { useEffect, useState } from 'preact/hooks';

export interface ConsoleConfig {
  issuer: string | null;
  clientId: string | null;
  scopes: string[];
}

interface Session {
  kind: 'code' | 'oidc';
  token: string;
  refreshToken?: string;
  idToken?: string;
  expiresAt?: number;
}

export type AuthState =
  | { status: 'loading' }
  | { status: 'signedOut'; message?: string }
  | { status: 'signedIn' };

interface Discovery {
  authorization_endpoint: string;
  token_endpoint: string;
  end_session_endpoint?: string;
}

const OIDC_KEY = 'pxb.console.oidc';
/** One-time code exchange (`POST`) and sign-out (`DELETE`), outside the versioned API. */
const SESSION = '/console/session';
let config: ConsoleConfig = { issuer: null, clientId: null, scopes: [] };
let session: Session | null = null;
let state: AuthState = { status: 'loading' };
let timer: ReturnType<typeof setTimeout> | undefined;
const listeners = new Set<(s: AuthState) => void>();

function set(s: AuthState) {
  state = s;
  listeners.forEach((l) => l(s));
}

export function useAuth(): AuthState {
  const [s, setS] = useState(state);
  useEffect(() => {
    listeners.add(setS);
    setS(state);
    return () => {
      listeners.delete(setS);
    };
  }, []);
  return s;
}

export const consoleConfig = () => config;
export const oidcEnabled = () => !!(config.issuer && config.clientId);
export const bearer = () => session?.token ?? null;

/** Forgets the session (a 401, an expiry, a failed renewal) and shows the sign-in page. */
export function signedOut(message?: string) {
  if (timer) clearTimeout(timer);
  timer = undefined;
  session = null;
  if (state.status !== 'signedOut' || message) set({ status: 'signedOut', message });
}

function b64url(bytes: Uint8Array): string {
  let s = '';
  bytes.forEach((b) => (s += String.fromCharCode(b)));
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function random(n = 32): string {
  return b64url(crypto.getRandomValues(new Uint8Array(n)));
}

async function challengeOf(verifier: string): Promise<string> {
  const d = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  return b64url(new Uint8Array(d));
}

let discoveryCache: Promise<Discovery> | undefined;
function discovery(): Promise<Discovery> {
  if (!config.issuer) return Promise.reject(new Error('no issuer configured'));
  if (!discoveryCache) {
    const url = config.issuer.replace(/\/+$/, '') + '/.well-known/openid-configuration';
    discoveryCache = fetch(url, { credentials: 'omit' }).then(async (r) => {
      if (!r.ok) throw new Error(`the issuer's discovery document answered ${r.status}`);
      const d = (await r.json()) as Discovery;
      if (!d.authorization_endpoint || !d.token_endpoint) throw new Error('the issuer names no authorization or token endpoint');
      return d;
    });
    discoveryCache.catch(() => (discoveryCache = undefined));
  }
  return discoveryCache;
}

const redirectUri = () => location.origin + '/';

function schedule(ms: number, f: () => void) {
  if (timer) clearTimeout(timer);
  timer = setTimeout(f, Math.max(1000, Math.min(ms, 2 ** 31 - 1)));
}

interface TokenResponse {
  access_token: string;
  expires_in?: number;
  refresh_token?: string;
  id_token?: string;
  error?: string;
  error_description?: string;
}

async function tokenRequest(form: Record<string, string>): Promise<TokenResponse> {
  const d = await discovery();
  const r = await fetch(d.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
    body: new URLSearchParams(form).toString(),
    credentials: 'omit',
  });
  const t = (await r.json().catch(() => ({}))) as TokenResponse;
  if (!r.ok || !t.access_token) throw new Error(t.error_description || t.error || `the token endpoint answered ${r.status}`);
  return t;
}

function jwtPayload(jwt: string): Record<string, unknown> | null {
  try {
    const p = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const pad = p + '='.repeat((4 - (p.length % 4)) % 4);
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(pad), (c) => c.charCodeAt(0))));
  } catch {
    return null;
  }
}

function adoptOidc(t: TokenResponse, previous?: Session) {
  session = {
    kind: 'oidc',
    token: t.access_token,
    refreshToken: t.refresh_token ?? previous?.refreshToken,
    idToken: t.id_token ?? previous?.idToken,
    expiresAt: t.expires_in ? Date.now() + t.expires_in * 1000 : undefined,
  };
  if (t.expires_in) {
    const lifetime = t.expires_in * 1000;
    // Renew shortly before the token runs out (a minute, or a fifth of short lifetimes).
    const early = Math.min(60_000, lifetime / 5);
    if (session.refreshToken) schedule(lifetime - early, renew);
    else schedule(lifetime, () => signedOut('Your session has expired. Sign in again.'));
  }
}

let renewing: Promise<boolean> | undefined;

/**
 * Renews the session's access token with its refresh token (one renewal at a time, shared by
 * every caller). A failure is retried with backoff while the current token is still valid; then
 * the session ends. Resolves whether a new token is in use.
 */
function renewNow(): Promise<boolean> {
  if (!renewing) {
    renewing = (async () => {
      const s = session;
      if (!s?.refreshToken || !config.clientId) return false;
      for (let attempt = 0; ; attempt++) {
        try {
          const t = await tokenRequest({
            grant_type: 'refresh_token',
            refresh_token: s.refreshToken,
            client_id: config.clientId,
            scope: config.scopes.join(' '),
          });
          if (session !== s) return false;
          adoptOidc(t, s);
          return true;
        } catch (e) {
          if (session !== s) return false;
          const wait = Math.min(30_000, 2_000 * 2 ** attempt);
          if (!s.expiresAt || Date.now() + wait >= s.expiresAt) {
            signedOut(`Your session could not be renewed (${(e as Error).message}). Sign in again.`);
            return false;
          }
          await new Promise((r) => setTimeout(r, wait));
        }
      }
    })().finally(() => (renewing = undefined));
  }
  return renewing;
}

async function renew() {
  if (!session?.refreshToken || !config.clientId) return signedOut('Your session has expired. Sign in again.');
  await renewNow();
}

/**
 * After a 401 for `token`: true when the caller should try again with a new token (the session
 * renewed itself); false when the session is over (or `token` is not the session's any more,
 * and the caller should not end the new session for it).
 */
export async function recoverFrom401(token: string | null): Promise<'retry' | 'stale' | 'over'> {
  const s = session;
  if (!s || s.token !== token) return 'stale';
  if (s.kind === 'oidc' && s.refreshToken && (await renewNow())) return 'retry';
  return 'over';
}

// A tab that slept past its renewal (timers are throttled in the background) renews on waking.
if (typeof document !== 'undefined') {
  document.addEventListener('visibilitychange', () => {
    const s = session;
    if (!document.hidden && s?.kind === 'oidc' && s.expiresAt && s.expiresAt - Date.now() < 60_000) void renewNow();
  });
}

/** The account a `#/signin?login_hint=…` address names, if any (passed on to the issuer). */
function loginHint(): string | null {
  const m = /^#\/signin\?(.*)$/.exec(location.hash);
  return m ? new URLSearchParams(m[1]).get('login_hint') : null;
}

/** Starts the OpenID Connect redirect to the issuer. */
export async function signInWithOidc(): Promise<void> {
  if (!config.issuer || !config.clientId) throw new Error('sign-in with an identity provider is not configured');
  const d = await discovery();
  const verifier = random(48);
  const st = random();
  const nonce = random();
  const returnTo = location.hash.startsWith('#/') && !location.hash.startsWith('#/signin') ? location.hash : '#/fleet';
  sessionStorage.setItem(OIDC_KEY, JSON.stringify({ verifier, state: st, nonce, returnTo }));
  const u = new URL(d.authorization_endpoint);
  u.searchParams.set('response_type', 'code');
  u.searchParams.set('client_id', config.clientId);
  u.searchParams.set('redirect_uri', redirectUri());
  u.searchParams.set('scope', config.scopes.join(' '));
  u.searchParams.set('state', st);
  u.searchParams.set('nonce', nonce);
  u.searchParams.set('code_challenge', await challengeOf(verifier));
  u.searchParams.set('code_challenge_method', 'S256');
  const hint = loginHint();
  if (hint) u.searchParams.set('login_hint', hint);
  location.assign(u.toString());
}

async function oidcCallback(params: URLSearchParams): Promise<void> {
  const raw = sessionStorage.getItem(OIDC_KEY);
  sessionStorage.removeItem(OIDC_KEY);
  const saved = raw ? (JSON.parse(raw) as { verifier: string; state: string; nonce: string; returnTo: string }) : null;
  // Whatever happens next, the code and state leave the address bar and the history.
  history.replaceState(null, '', '/' + (saved?.returnTo ?? '#/fleet'));
  if (!saved || saved.state !== params.get('state')) throw new Error('the sign-in response does not belong to this browser tab; sign in again');
  const error = params.get('error');
  if (error) throw new Error(params.get('error_description') || error);
  const t = await tokenRequest({
    grant_type: 'authorization_code',
    code: params.get('code') ?? '',
    redirect_uri: redirectUri(),
    client_id: config.clientId ?? '',
    code_verifier: saved.verifier,
  });
  // The ID token must be this sign-in's: for this client, from this issuer, with our nonce.
  const claims = t.id_token ? jwtPayload(t.id_token) : null;
  if (!claims) throw new Error('the issuer sent no readable ID token; sign in again');
  const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  const same = (a: unknown, b: string | null) => typeof a === 'string' && !!b && a.replace(/\/+$/, '') === b.replace(/\/+$/, '');
  if (claims.nonce !== saved.nonce) throw new Error('the ID token carries another nonce; sign in again');
  if (!aud.includes(config.clientId)) throw new Error('the ID token is for another client; sign in again');
  if (!same(claims.iss, config.issuer)) throw new Error('the ID token comes from another issuer; sign in again');
  adoptOidc(t);
}

/** Signs in with a one-time code (`POST /console/session`). */
export async function signInWithCode(code: string): Promise<void> {
  const exchange = (path: string) =>
    fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ code }),
      credentials: 'omit',
    });
  const r = await exchange(SESSION);
  const b = (await r.json().catch(() => ({}))) as { token?: string; expiresAt?: string; error?: { message?: string } };
  if (!r.ok || !b.token) {
    throw new Error(b.error?.message || `the one-time code was refused (${r.status})`);
  }
  const expiresAt = b.expiresAt ? Date.parse(b.expiresAt) : undefined;
  session = { kind: 'code', token: b.token, expiresAt };
  if (expiresAt && !isNaN(expiresAt)) schedule(expiresAt - Date.now(), () => signedOut('Your session has expired. Sign in again.'));
  set({ status: 'signedIn' });
}

/** Signs in with the code of a `#/signin?code=…` address, if it is one; true if it was. */
async function codeFromHash(): Promise<boolean> {
  const m = /^#\/signin\?(.*)$/.exec(location.hash);
  if (!m) return false;
  const code = new URLSearchParams(m[1]).get('code');
  // Without a code (`#/signin?login_hint=…`) the address stays for the sign-in page.
  if (!code) return false;
  // The code must not stay in the address bar or the history.
  history.replaceState(null, '', location.pathname + location.search + '#/fleet');
  if (session) {
    // Another sign-in replaces this one.
    if (timer) clearTimeout(timer);
    session = null;
  }
  set({ status: 'loading' });
  try {
    await signInWithCode(code);
  } catch (e) {
    signedOut(`Sign-in failed: ${(e as Error).message}`);
  }
  return true;
}

/** Reads the console's configuration and finishes a sign-in the URL carries, if any. */
export async function startAuth(): Promise<void> {
  try {
    const r = await fetch('/console/config.json', { credentials: 'omit', cache: 'no-store' });
    if (r.ok) config = { ...config, ...((await r.json()) as Partial<ConsoleConfig>) };
    if (!Array.isArray(config.scopes)) config.scopes = [];
  } catch {
    // no configuration: one-time codes only
  }
  // A one-time link opened in a tab that already runs the console changes the hash only.
  window.addEventListener('hashchange', () => void codeFromHash());
  if (await codeFromHash()) return;
  const params = new URLSearchParams(location.search);
  if (params.has('state') && (params.has('code') || params.has('error'))) {
    try {
      await oidcCallback(params);
      set({ status: 'signedIn' });
    } catch (e) {
      signedOut(`Sign-in failed: ${(e as Error).message}`);
    }
    return;
  }
  signedOut();
}

/** Ends the session on the server, forgets the tokens, and signs out of the issuer if it can. */
export async function signOut(): Promise<void> {
  const s = session;
  if (s) {
    try {
      await fetch(SESSION, { method: 'DELETE', headers: { authorization: `Bearer ${s.token}` }, credentials: 'omit' });
    } catch {
      // harmless
    }
  }
  session = null;
  if (timer) clearTimeout(timer);
  timer = undefined;
  history.replaceState(null, '', location.pathname + '#/fleet');
  if (s?.kind === 'oidc') {
    try {
      const d = await discovery();
      if (d.end_session_endpoint) {
        const u = new URL(d.end_session_endpoint);
        u.searchParams.set('post_logout_redirect_uri', redirectUri());
        if (config.clientId) u.searchParams.set('client_id', config.clientId);
        if (s.idToken) u.searchParams.set('id_token_hint', s.idToken);
        location.assign(u.toString());
        return;
      }
    } catch {
      // fall through to the sign-in page
    }
  }
  set({ status: 'signedOut', message: 'You are signed out.' });
}
