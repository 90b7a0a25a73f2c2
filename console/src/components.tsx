import type { ComponentChildren, JSX } from 'preact';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { describe, type Tab, type TimeBracket } from './api';
import { prefs, setBracket, setTab } from './store';

type Tone = 'good' | 'warn' | 'bad' | 'neutral' | 'info';

const tones: Record<string, Tone> = {
  Ready: 'good', Valid: 'good', Success: 'good', Completed: 'good', Running: 'good', Active: 'good', Eligible: 'good',
  Degraded: 'warn', PartialSuccess: 'warn', Stalled: 'warn', AgentOutdated: 'warn', Paused: 'warn',
  Requested: 'info', Pending: 'info', InProgress: 'info', Starting: 'info', Deleting: 'info',
  Unreachable: 'bad', Failed: 'bad', Invalid: 'bad', Failing: 'bad', Missed: 'bad', AgentMissing: 'bad', Inactive: 'bad',
  Ineligible: 'neutral', Hibernated: 'neutral', Retired: 'neutral', Unknown: 'neutral', Superseded: 'neutral',
};
const icons: Record<Tone, string> = { good: '✓', warn: '!', bad: '✕', info: '…', neutral: '–' };

const labels: Record<string, string> = {
  PartialSuccess: 'Partial success',
  InProgress: 'In progress',
  AgentMissing: 'Agent missing',
  AgentOutdated: 'Agent outdated',
};

export const stateLabel = (s: string) => labels[s] ?? s;

/** A state as colour, icon and text (never colour alone). */
export function Badge({ state, text, testid }: { state: string; text?: string; testid?: string }) {
  const tone = tones[state] ?? 'neutral';
  return (
    <span class={`badge badge-${tone}`} data-testid={testid} data-state={state}>
      <span class="badge-icon" aria-hidden="true">
        {icons[tone]}
      </span>
      {text ?? stateLabel(state)}
    </span>
  );
}

export function ErrorBox({ error, testid }: { error: unknown; testid?: string }) {
  if (!error) return null;
  return (
    <div class="alert alert-bad" role="alert" data-testid={testid ?? 'error'}>
      {describe(error)}
    </div>
  );
}

export function Notice({ children, tone = 'info', testid }: { children: ComponentChildren; tone?: Tone; testid?: string }) {
  return (
    <div class={`alert alert-${tone}`} data-testid={testid}>
      {children}
    </div>
  );
}

export function ago(ms: number): string {
  const s = Math.round((Date.now() - ms) / 1000);
  const a = Math.abs(s);
  const f = a < 60 ? `${a}s` : a < 3600 ? `${Math.floor(a / 60)}m` : a < 86400 ? `${Math.floor(a / 3600)}h` : `${Math.floor(a / 86400)}d`;
  return s >= 0 ? `${f} ago` : `in ${f}`;
}

export function fmtTime(ms: number): string {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A time (RFC 3339 or ms), shown relative with the absolute time as its title. */
export function Time({ at, absolute }: { at?: string | number | null; absolute?: boolean }) {
  if (at === undefined || at === null || at === '') return <span class="muted">—</span>;
  const ms = typeof at === 'number' ? at : Date.parse(at);
  if (isNaN(ms)) return <span>{String(at)}</span>;
  const iso = new Date(ms).toISOString();
  return (
    <time dateTime={iso} title={fmtTime(ms)}>
      {absolute ? fmtTime(ms) : ago(ms)}
    </time>
  );
}

export function bytes(n?: number | null): string {
  if (!n) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i ? v.toFixed(1) : v} ${u[i]}`;
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <p class="empty">{children}</p>;
}

export function Loading({ what }: { what: string }) {
  return (
    <p class="loading" role="status">
      Loading {what}…
    </p>
  );
}

async function copyText(text: string): Promise<void> {
  try {
    await navigator.clipboard.writeText(text);
    return;
  } catch {
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.className = 'offscreen';
    document.body.appendChild(ta);
    ta.select();
    document.execCommand('copy');
    ta.remove();
  }
}

export function CopyButton({ text, what, testid }: { text: string; what: string; testid?: string }) {
  const [done, setDone] = useState(false);
  return (
    <button
      type="button"
      class="btn btn-small"
      aria-label={`${done ? 'Copied' : 'Copy'} ${what}`}
      data-testid={testid}
      onClick={async () => {
        await copyText(text);
        setDone(true);
        setTimeout(() => setDone(false), 1500);
      }}
    >
      {done ? 'Copied' : 'Copy'}
    </button>
  );
}

/** A button that asks once more before it acts (focus moves to the question; Escape cancels). */
export function ConfirmButton({
  label, confirm, onConfirm, testid, danger = true, disabled, what,
}: { label: string; confirm: string; onConfirm: () => void | Promise<void>; testid?: string; danger?: boolean; disabled?: boolean; what?: string }) {
  const [asking, setAsking] = useState(false);
  const [busy, setBusy] = useState(false);
  const trigger = useRef<HTMLButtonElement>(null);
  const yes = useRef<HTMLButtonElement>(null);
  const wasAsking = useRef(false);
  useEffect(() => {
    if (asking) yes.current?.focus();
    else if (wasAsking.current) trigger.current?.focus();
    wasAsking.current = asking;
  }, [asking]);
  const named = what ? `${label} ${what}` : undefined;
  if (!asking)
    return (
      <button
        type="button"
        ref={trigger}
        class={`btn btn-small ${danger ? 'btn-danger' : ''}`}
        data-testid={testid}
        disabled={disabled}
        aria-label={named}
        onClick={() => setAsking(true)}
      >
        {label}
      </button>
    );
  return (
    <span
      class="confirm"
      onKeyDown={(e) => {
        if (e.key === 'Escape') setAsking(false);
      }}
    >
      <button
        type="button"
        ref={yes}
        class="btn btn-small btn-danger-solid"
        data-testid={testid ? `${testid}-confirm` : undefined}
        disabled={busy}
        aria-label={what ? `${confirm} (${what})` : undefined}
        onClick={async () => {
          setBusy(true);
          try {
            await onConfirm();
          } finally {
            setBusy(false);
            setAsking(false);
          }
        }}
      >
        {busy ? 'Working…' : confirm}
      </button>
      <button type="button" class="btn btn-small" onClick={() => setAsking(false)}>
        Cancel
      </button>
    </span>
  );
}

/** The namespace / virtual-machine tabs; the choice is stored per user on the server. */
export function ViewTabs({ note }: { note?: string }) {
  const p = prefs.use();
  const [error, setError] = useState<unknown>();
  const tabs: { id: Tab; label: string }[] = [
    { id: 'namespaces', label: 'Namespaces' },
    { id: 'vms', label: 'Virtual machines' },
  ];
  const refs = useRef<(HTMLButtonElement | null)[]>([]);
  const choose = async (t: Tab) => {
    setError(undefined);
    try {
      await setTab(t);
    } catch (e) {
      setError(e);
    }
  };
  return (
    <div class="tabs-wrap">
      <div class="tabs" role="tablist" aria-label="Backup kind">
        {tabs.map((t, i) => (
          <button
            key={t.id}
            ref={(el) => {
              refs.current[i] = el;
            }}
            type="button"
            role="tab"
            class="tab"
            aria-selected={p.tab === t.id}
            tabIndex={p.tab === t.id ? 0 : -1}
            data-testid={`tab-${t.id}`}
            onClick={() => choose(t.id)}
            onKeyDown={(e) => {
              if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
                const j = (i + (e.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length;
                refs.current[j]?.focus();
                void choose(tabs[j].id);
              }
            }}
          >
            {t.label}
          </button>
        ))}
      </div>
      {note && <span class="muted small">{note}</span>}
      <ErrorBox error={error} />
    </div>
  );
}

const spans: Record<string, number> = { '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };

/** The time range a bracket stands for now: [from, to) in ms (to undefined: open). */
export function bracketRange(b: TimeBracket): { from?: number; to?: number } {
  if (b.kind === 'custom') {
    return { from: b.from ? Date.parse(b.from) : undefined, to: b.to ? Date.parse(b.to) : undefined };
  }
  return { from: Date.now() - (spans[b.kind] ?? spans['24h']) };
}

export function bracketLabel(b: TimeBracket): string {
  if (b.kind === 'custom') return `${b.from ? fmtTime(Date.parse(b.from)) : '…'} – ${b.to ? fmtTime(Date.parse(b.to)) : '…'}`;
  return { '1h': 'Last hour', '24h': 'Last 24 hours', '7d': 'Last 7 days', '30d': 'Last 30 days' }[b.kind];
}

function localInput(ms: number): string {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

/** The time bracket (stored for this sign-in session on the server). */
export function BracketPicker() {
  const p = prefs.use();
  const b = p.timeBracket;
  const [kind, setKind] = useState<string>(b.kind);
  const [from, setFrom] = useState(() => localInput(b.from ? Date.parse(b.from) : Date.now() - 86400e3));
  const [to, setTo] = useState(() => localInput(b.to ? Date.parse(b.to) : Date.now()));
  const [error, setError] = useState<unknown>();
  useEffect(() => setKind(b.kind), [b.kind]);
  const apply = async (tb: TimeBracket) => {
    setError(undefined);
    try {
      await setBracket(tb);
    } catch (e) {
      setError(e);
    }
  };
  return (
    <div class="bracket">
      <label class="inline-field">
        <span>Time range</span>
        <select
          data-testid="bracket-select"
          value={kind}
          onChange={(e) => {
            const k = (e.currentTarget as HTMLSelectElement).value;
            setKind(k);
            if (k !== 'custom') void apply({ kind: k as TimeBracket['kind'] });
          }}
        >
          <option value="1h">Last hour</option>
          <option value="24h">Last 24 hours</option>
          <option value="7d">Last 7 days</option>
          <option value="30d">Last 30 days</option>
          <option value="custom">Custom…</option>
        </select>
      </label>
      {kind === 'custom' && (
        <form
          class="bracket-custom"
          onSubmit={(e) => {
            e.preventDefault();
            const f = new Date(from), t = new Date(to);
            if (isNaN(f.getTime()) || isNaN(t.getTime()) || f >= t) {
              setError(new Error('“From” must be before “to”.'));
              return;
            }
            void apply({ kind: 'custom', from: f.toISOString().replace(/\.\d+Z$/, 'Z'), to: t.toISOString().replace(/\.\d+Z$/, 'Z') });
          }}
        >
          <label class="inline-field">
            <span>From</span>
            <input type="datetime-local" value={from} onInput={(e) => setFrom((e.currentTarget as HTMLInputElement).value)} data-testid="bracket-from" />
          </label>
          <label class="inline-field">
            <span>To</span>
            <input type="datetime-local" value={to} onInput={(e) => setTo((e.currentTarget as HTMLInputElement).value)} data-testid="bracket-to" />
          </label>
          <button class="btn btn-small" type="submit" data-testid="bracket-apply">
            Apply
          </button>
        </form>
      )}
      <ErrorBox error={error} />
    </div>
  );
}

export interface Column<T> {
  header: string;
  cls?: string;
  width: string;
  render: (row: T) => ComponentChildren;
}

/**
 * A table that renders only the rows in view (10k+ rows stay responsive). Rows have one fixed
 * height; the layout is a CSS grid with the column widths given.
 */
export function VirtualTable<T>({
  rows, columns, rowKey, label, testid, rowHeight = 34, maxHeight = 560, onRowClick,
}: {
  rows: T[];
  columns: Column<T>[];
  rowKey: (r: T) => string;
  label: string;
  testid?: string;
  rowHeight?: number;
  maxHeight?: number;
  onRowClick?: (r: T) => void;
}) {
  const scroller = useRef<HTMLDivElement>(null);
  const [top, setTop] = useState(0);
  const [viewH, setViewH] = useState(maxHeight);
  useEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const measure = () => setViewH(el.clientHeight || maxHeight);
    measure();
    const ro = new ResizeObserver(measure);
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  const total = rows.length * rowHeight;
  const overscan = 8;
  const first = Math.max(0, Math.floor(top / rowHeight) - overscan);
  const last = Math.min(rows.length, Math.ceil((top + viewH) / rowHeight) + overscan);
  const grid = useMemo(() => ({ gridTemplateColumns: columns.map((c) => c.width).join(' ') }), [columns]);
  const visible: JSX.Element[] = [];
  for (let i = first; i < last; i++) {
    const r = rows[i];
    visible.push(
      <div
        key={rowKey(r)}
        role="row"
        aria-rowindex={i + 2}
        class={`vrow ${onRowClick ? 'vrow-click' : ''} ${i % 2 ? 'vrow-odd' : ''}`}
        style={{ ...grid, transform: `translateY(${i * rowHeight}px)`, height: `${rowHeight}px` }}
        data-testid={testid ? `${testid}-row` : undefined}
        onClick={onRowClick ? () => onRowClick(r) : undefined}
      >
        {columns.map((c, j) => (
          <div role="cell" key={j} class={`vcell ${c.cls ?? ''}`}>
            {c.render(r)}
          </div>
        ))}
      </div>,
    );
  }
  return (
    <div class="vtable" role="table" aria-label={label} aria-rowcount={rows.length + 1} data-testid={testid} data-rows={rows.length}>
      <div role="rowgroup">
        <div role="row" aria-rowindex={1} class="vrow vhead" style={grid}>
          {columns.map((c, j) => (
            <div role="columnheader" key={j} class={`vcell ${(c.cls ?? '').replace(/\bmono\b/, '')}`}>
              {c.header}
            </div>
          ))}
        </div>
      </div>
      <div
        ref={scroller}
        class="vbody"
        role="rowgroup"
        tabIndex={0}
        aria-label={`${label} (scrollable)`}
        style={{ maxHeight: `${maxHeight}px`, height: `${Math.min(maxHeight, Math.max(total, rowHeight))}px` }}
        onScroll={(e) => setTop((e.currentTarget as HTMLDivElement).scrollTop)}
      >
        <div class="vspacer" style={{ height: `${total}px` }}>
          {visible}
        </div>
      </div>
    </div>
  );
}

export function Field({ label, hint, children }: { label: string; hint?: string; children: ComponentChildren }) {
  return (
    <label class="field">
      <span class="field-label">{label}</span>
      {children}
      {hint && <span class="field-hint">{hint}</span>}
    </label>
  );
}

export function PageHeader({ title, children }: { title: string; children?: ComponentChildren }) {
  return (
    <div class="page-header">
      <h1>{title}</h1>
      <div class="page-actions">{children}</div>
    </div>
  );
}

/** "a=b, c=d" or one per line → a map. */
export function parseLabels(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of s.split(/[\n,]+/)) {
    const t = part.trim();
    if (!t) continue;
    const i = t.indexOf('=');
    if (i <= 0) throw new Error(`label “${t}” is not key=value`);
    out[t.slice(0, i).trim()] = t.slice(i + 1).trim();
  }
  return out;
}

export function splitList(s: string): string[] {
  return s.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
}

export function selectorText(c: { all?: boolean; names?: string[]; labels?: Record<string, string> }): string {
  if (c.all) return 'All clusters';
  const parts: string[] = [];
  if (c.labels && Object.keys(c.labels).length) parts.push('labels ' + Object.entries(c.labels).map(([k, v]) => `${k}=${v}`).join(', '));
  if (c.names && c.names.length) parts.push(c.names.join(', '));
  return parts.join('; ') || 'No clusters';
}
