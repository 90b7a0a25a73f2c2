// What the console knows about the signed-in user: whoami, the current org, the preferences.
import { useEffect, useRef, useState } from 'preact/hooks';
import { get, put, type Preferences, type Role, type Tab, type TimeBracket, type WhoAmI } from './api';

export class Store<T> {
  private ls = new Set<(v: T) => void>();
  constructor(private v: T) {}
  get value(): T {
    return this.v;
  }
  set(v: T) {
    this.v = v;
    this.ls.forEach((l) => l(v));
  }
  use(): T {
    const [v, setV] = useState(this.v);
    useEffect(() => {
      this.ls.add(setV);
      setV(this.v);
      return () => {
        this.ls.delete(setV);
      };
    }, []);
    return v;
  }
}

export const me = new Store<WhoAmI | null>(null);
export const prefs = new Store<Preferences>({ tab: 'namespaces', timeBracket: { kind: '24h' } });
export const currentOrg = new Store<string | null>(null);

export async function loadUser(): Promise<void> {
  const [w, p] = await Promise.all([get<WhoAmI>('/v1/whoami'), get<Preferences>('/v1/me/preferences')]);
  me.set(w);
  prefs.set(p);
  const orgs = Object.keys(w.orgs).sort();
  const cur = currentOrg.value;
  if (!cur || !orgs.includes(cur)) currentOrg.set(orgs[0] ?? null);
}

export function clearUser() {
  me.set(null);
  prefs.set({ tab: 'namespaces', timeBracket: { kind: '24h' } });
}

/** Stores the tab (per user, across logins). */
export async function setTab(tab: Tab): Promise<void> {
  const before = prefs.value;
  prefs.set({ ...before, tab });
  try {
    prefs.set(await put<Preferences>('/v1/me/preferences', { tab }));
  } catch (e) {
    prefs.set(before);
    throw e;
  }
}

/** Stores the time bracket (per sign-in session). */
export async function setBracket(timeBracket: TimeBracket): Promise<void> {
  const before = prefs.value;
  prefs.set({ ...before, timeBracket });
  try {
    prefs.set(await put<Preferences>('/v1/me/preferences', { timeBracket }));
  } catch (e) {
    prefs.set(before);
    throw e;
  }
}

const rank: Record<Role, number> = { viewer: 1, operator: 2, admin: 3 };

/** Whether the user has at least `need` in `org` (provider admins have everything). */
export function can(w: WhoAmI | null, org: string | null, need: Role): boolean {
  if (!w || !org) return false;
  if (w.providerAdmin) return true;
  const r = w.orgs[org];
  return !!r && rank[r] >= rank[need];
}

export function useCan(org: string | null, need: Role): boolean {
  return can(me.use(), org, need);
}

export interface Loaded<T> {
  data?: T;
  error?: unknown;
  loading: boolean;
  reload: () => void;
  at?: number;
}

/**
 * Loads `load()` when `deps` change and then every `interval` ms (a number, or a function of the
 * data: undefined stops polling). Refreshes keep the previous data on screen until the new data
 * arrives; a change of `deps` drops it.
 */
export function useData<T>(
  load: (signal: AbortSignal) => Promise<T>,
  deps: unknown[],
  interval?: number | ((d: T | undefined) => number | undefined),
): Loaded<T> {
  const [st, setSt] = useState<{ data?: T; error?: unknown; loading: boolean; at?: number }>({ loading: true });
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  const intervalRef = useRef(interval);
  intervalRef.current = interval;
  const depKey = JSON.stringify(deps);
  const lastKey = useRef(depKey);

  useEffect(() => {
    if (lastKey.current !== depKey) {
      lastKey.current = depKey;
      setSt({ loading: true });
    } else {
      setSt((s) => ({ ...s, loading: true }));
    }
    const ac = new AbortController();
    let t: ReturnType<typeof setTimeout> | undefined;
    let alive = true;
    const run = async () => {
      let data: T | undefined;
      try {
        data = await loadRef.current(ac.signal);
        if (!alive) return;
        setSt({ data, loading: false, at: Date.now() });
      } catch (e) {
        if (!alive || (e instanceof DOMException && e.name === 'AbortError')) return;
        setSt((s) => ({ ...s, error: e, loading: false }));
      }
      const iv = intervalRef.current;
      const ms = typeof iv === 'function' ? iv(data) : iv;
      if (ms && alive) {
        t = setTimeout(function again() {
          if (!alive) return;
          if (document.hidden) t = setTimeout(again, 1000);
          else void run();
        }, ms);
      }
    };
    void run();
    return () => {
      alive = false;
      ac.abort();
      if (t) clearTimeout(t);
    };
  }, [depKey, tick]);

  return { ...st, reload: () => setTick((x) => x + 1) };
}
