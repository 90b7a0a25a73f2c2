import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import {
  all, enc, get, orgPath, post,
  type BackupRecord, type ClusterRecord, type Page, type RestoreRecord, type RestoreRequest,
} from '../api';
import {
  Badge, BracketPicker, Empty, ErrorBox, Field, Loading, Notice, PageHeader, Time, ViewTabs, bracketLabel, bracketRange, fmtTime, splitList,
} from '../components';
import { href, navigate } from '../router';
import { prefs, useCan, useData } from '../store';
import { FilterBar, bracketQuery, useChoices, type Filters } from './backups';

const RESTORE_PHASES = ['Pending', 'InProgress', 'Success', 'PartialSuccess', 'Failed', 'Stalled'];
const FINAL = ['Success', 'PartialSuccess', 'Failed', 'Stalled', 'Unknown'];

function mapping(m: Record<string, string>): string {
  const e = Object.entries(m);
  return e.length ? e.map(([a, b]) => `${a} → ${b}`).join(', ') : '—';
}

function Tally({ r }: { r: RestoreRecord }) {
  const c = r.counts;
  const done = c.created + c.replaced + c.skipped + c.failed;
  return (
    <span class="small">
      {done}/{c.total}
      {c.failed ? <strong class="text-bad"> · {c.failed} failed</strong> : null}
    </span>
  );
}

export function RestoresPage({ org }: { org: string }) {
  const p = prefs.use();
  const operator = useCan(org, 'operator');
  const choices = useChoices(org);
  const [f, setF] = useState<Filters>({ cluster: '', location: '', namespace: '', phase: '' });
  const clusterId = f.cluster ? choices.data?.clusters.find((c) => c.name === f.cluster)?.id ?? f.cluster : '';
  const list = useData(
    (signal) => {
      // Restores take from/to rather than a bracket: the bracket's range as of this refresh
      // (computed here, so that time passing refreshes the list in place instead of reloading it).
      const range = bracketRange(p.timeBracket);
      const from = range.from ? new Date(range.from).toISOString() : undefined;
      const to = range.to ? new Date(range.to).toISOString() : undefined;
      return get<Page<RestoreRecord>>(orgPath(org, '/restores'), { cluster: clusterId, location: f.location, state: f.phase, from, to, limit: 200 }, signal);
    },
    [org, clusterId, f.location, f.phase, p.timeBracket],
    (d) => (d && d.items.some((r) => !FINAL.includes(r.phase)) ? 2000 : 10000),
  );
  // Each restore carries the view of the backup it restored.
  const rows = (list.data?.items ?? []).filter((r) => (r.view ?? 'namespaces') === p.tab);
  return (
    <section data-testid="restores-page">
      <PageHeader title={`Restores · ${org}`}>
        {operator && (
          <a class="btn btn-primary" href={href('orgs', org, 'restores', 'new')} data-testid="restore-new">
            New restore…
          </a>
        )}
      </PageHeader>
      <div class="toolbar">
        <ViewTabs note="By the kind of backup restored" />
        <BracketPicker />
      </div>
      <FilterBar org={org} f={f} setF={setF} phases={RESTORE_PHASES} namespace={false} />
      <ErrorBox error={list.error} />
      {!list.data && list.loading && <Loading what="restores" />}
      {list.data && rows.length === 0 && <Empty>No restores in {bracketLabel(p.timeBracket).toLowerCase()}.</Empty>}
      {rows.length > 0 && (
        <div class="table-wrap">
          <table class="grid" data-testid="restores-table">
            <thead>
              <tr>
                <th scope="col">Restore</th>
                <th scope="col">Backup</th>
                <th scope="col">Into cluster</th>
                <th scope="col">Namespaces</th>
                <th scope="col">Phase</th>
                <th scope="col">Objects</th>
                <th scope="col">Created</th>
                <th scope="col">Completed</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((r) => (
                <tr key={r.id} data-testid="restore-row" data-id={r.id}>
                  <th scope="row" class="mono small">
                    <a href={href('orgs', org, 'restores', r.id)}>{r.id}</a>
                  </th>
                  <td class="mono small">
                    <a href={href('orgs', org, 'backups', r.backup)}>{r.backup}</a>
                  </td>
                  <td>{r.clusterName || r.cluster}</td>
                  <td>
                    {r.namespaces.length ? r.namespaces.join(', ') : 'all'}
                    {Object.keys(r.namespaceMapping).length > 0 && <div class="muted small">{mapping(r.namespaceMapping)}</div>}
                  </td>
                  <td>
                    <span title={r.message ?? ''}>
                      <Badge state={r.phase} />
                    </span>
                  </td>
                  <td>
                    <Tally r={r} />
                  </td>
                  <td>
                    <Time at={r.createdMs} />
                  </td>
                  <td>
                    <Time at={r.completedMs} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

interface Row {
  from: string;
  to: string;
}

export function RestoreWizard({ org, backup }: { org: string; backup?: string }) {
  const p = prefs.use();
  const admin = useCan(org, 'admin');
  const operator = useCan(org, 'operator');
  const [step, setStep] = useState(1);
  const [chosen, setChosen] = useState(backup ?? '');
  const [target, setTarget] = useState('');
  const [only, setOnly] = useState<string[] | null>(null);
  const [rows, setRows] = useState<Row[]>([]);
  const [kinds, setKinds] = useState('');
  const [existing, setExisting] = useState<'Retain' | 'Replace'>('Retain');
  // Each new step takes the focus (keyboard and screen-reader users continue there).
  const firstStep = useRef(true);
  useEffect(() => {
    if (firstStep.current) {
      firstStep.current = false;
      return;
    }
    document.querySelector<HTMLElement>('.step-card')?.focus();
  }, [step]);
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);

  const candidates = useData(
    async (signal) => {
      const pg = await get<Page<BackupRecord>>(orgPath(org, '/backups'), { view: p.tab, ...bracketQuery(p.timeBracket), limit: 200 }, signal);
      return pg.items.filter((b) => b.phase === 'Success' || b.phase === 'PartialSuccess');
    },
    [org, p.tab, p.timeBracket],
  );
  const picked = useData(
    (signal) => (chosen ? get<BackupRecord>(orgPath(org, `/backups/${enc(chosen)}`), undefined, signal) : Promise.resolve(null)),
    [org, chosen],
  );
  const clusters = useData((signal) => all<ClusterRecord>(orgPath(org, '/clusters'), {}, 50000, signal), [org]);
  const targets = useMemo(
    () => (clusters.data ?? []).filter((c) => !c.ineligible && !c.retiredAt).map((c) => c.name).sort(),
    [clusters.data],
  );
  const b = picked.data;
  const namespaces = only ?? b?.namespaces ?? [];
  const request = (): RestoreRequest => {
    const m: Record<string, string> = {};
    for (const r of rows) {
      if (!r.from.trim() && !r.to.trim()) continue;
      if (!r.from.trim() || !r.to.trim()) throw new Error('Every mapping row needs a source and a target namespace.');
      m[r.from.trim()] = r.to.trim();
    }
    const req: RestoreRequest = { backup: chosen };
    if (target) req.cluster = target;
    if (b && only && only.length !== b.namespaces.length) req.namespaces = only;
    if (Object.keys(m).length) req.namespaceMapping = m;
    const k = splitList(kinds);
    if (k.length) req.allowClusterKinds = k;
    if (existing === 'Replace') req.existingResourcePolicy = 'Replace';
    return req;
  };
  let preview: RestoreRequest | null = null;
  let previewError: unknown;
  try {
    preview = request();
  } catch (e) {
    previewError = e;
  }

  if (!operator)
    return (
      <section>
        <PageHeader title="Restore" />
        <Notice tone="warn">Not allowed: restoring needs the operator role in {org}.</Notice>
      </section>
    );

  const steps = ['Backup', 'Target and namespaces', 'Review'];
  return (
    <section data-testid="restore-wizard">
      <nav class="crumbs" aria-label="Breadcrumb">
        <a href={href('orgs', org, 'restores')}>Restores</a> <span aria-hidden="true">/</span> <span>New</span>
      </nav>
      <PageHeader title="Restore a backup" />
      <ol class="steps" aria-label="Steps">
        {steps.map((s, i) => (
          <li key={s} class={`step ${step === i + 1 ? 'step-current' : step > i + 1 ? 'step-done' : ''}`} aria-current={step === i + 1 ? 'step' : undefined}>
            <span class="step-n">{i + 1}</span> {s}
          </li>
        ))}
      </ol>
      {step === 1 && (
        <div class="card form step-card" tabIndex={-1} aria-label="Step 1 of 3" data-testid="restore-step-1">
          <div class="toolbar">
            <ViewTabs />
            <BracketPicker />
          </div>
          <ErrorBox error={candidates.error} />
          <Field label="Backup" hint={`Successful ${p.tab === 'vms' ? 'virtual-machine' : 'namespace'} backups of ${bracketLabel(p.timeBracket).toLowerCase()}`}>
            <select value={chosen} onChange={(e) => { setChosen((e.currentTarget as HTMLSelectElement).value); setOnly(null); }} data-testid="restore-backup">
              <option value="">Choose a backup…</option>
              {chosen && !(candidates.data ?? []).some((c) => c.id === chosen) && <option value={chosen}>{chosen}</option>}
              {(candidates.data ?? []).map((c) => (
                <option key={c.id} value={c.id}>
                  {c.id} · {c.clusterName} · {c.namespaces.join(', ')} · {fmtTime(c.createdMs)}
                </option>
              ))}
            </select>
          </Field>
          <ErrorBox error={picked.error} />
          {b && (
            <dl class="props" data-testid="restore-backup-summary">
              <div><dt>Cluster</dt><dd>{b.clusterName}</dd></div>
              <div><dt>Location</dt><dd>{b.locationName}</dd></div>
              <div><dt>Namespaces</dt><dd>{b.namespaces.join(', ')}</dd></div>
              <div><dt>Phase</dt><dd><Badge state={b.phase} /></dd></div>
              <div><dt>Objects</dt><dd>{b.objects}</dd></div>
              <div><dt>Created</dt><dd>{fmtTime(b.createdMs)}</dd></div>
            </dl>
          )}
          <div class="form-actions">
            <button type="button" class="btn btn-primary" disabled={!b} onClick={() => setStep(2)} data-testid="restore-next-1">
              Next
            </button>
          </div>
        </div>
      )}
      {step === 2 && b && (
        <div class="card form step-card" tabIndex={-1} aria-label="Step 2 of 3" data-testid="restore-step-2">
          <div class="form-row">
            <Field label="Restore into cluster">
              <select value={target} onChange={(e) => setTarget((e.currentTarget as HTMLSelectElement).value)} data-testid="restore-target">
                <option value="">{b.clusterName} (the backup's own cluster)</option>
                {targets.filter((t) => t !== b.clusterName).map((t) => (
                  <option key={t} value={t}>
                    {t}
                  </option>
                ))}
              </select>
            </Field>
          </div>
          <fieldset class="fieldset">
            <legend>Namespaces to restore</legend>
            <div class="radios">
              {b.namespaces.map((n) => (
                <label key={n} class="check">
                  <input
                    type="checkbox"
                    checked={namespaces.includes(n)}
                    onChange={(e) => {
                      const on = (e.currentTarget as HTMLInputElement).checked;
                      setOnly(on ? [...namespaces, n] : namespaces.filter((x) => x !== n));
                    }}
                  />
                  {n}
                </label>
              ))}
            </div>
          </fieldset>
          <fieldset class="fieldset" data-testid="restore-mapping">
            <legend>Namespace mapping</legend>
            <p class="muted small">Restore a namespace of the backup under another name. Unmapped namespaces keep their names.</p>
            {rows.map((r, i) => (
              <div class="map-row" key={i} data-testid="mapping-row">
                <label class="inline-field">
                  <span>From</span>
                  <input list="restore-ns" value={r.from} onInput={(e) => setRows(rows.map((x, j) => (j === i ? { ...x, from: (e.currentTarget as HTMLInputElement).value } : x)))} data-testid="mapping-from" />
                </label>
                <span aria-hidden="true">→</span>
                <label class="inline-field">
                  <span>To</span>
                  <input value={r.to} onInput={(e) => setRows(rows.map((x, j) => (j === i ? { ...x, to: (e.currentTarget as HTMLInputElement).value } : x)))} data-testid="mapping-to" />
                </label>
                <button type="button" class="btn btn-small" onClick={() => setRows(rows.filter((_, j) => j !== i))} aria-label={`Remove mapping row ${i + 1}`}>
                  Remove
                </button>
              </div>
            ))}
            <datalist id="restore-ns">
              {b.namespaces.map((n) => (
                <option key={n} value={n} />
              ))}
            </datalist>
            <button type="button" class="btn btn-small" onClick={() => setRows([...rows, { from: b.namespaces[rows.length] ?? '', to: '' }])} data-testid="mapping-add">
              Add mapping
            </button>
          </fieldset>
          <fieldset class="fieldset" data-testid="restore-policy">
            <legend>Objects that already exist on the cluster</legend>
            <label class="check">
              <input type="radio" name="existing" value="Retain" checked={existing === 'Retain'} onChange={() => setExisting('Retain')} data-testid="restore-retain" />
              Keep them (retain; they are counted as skipped)
            </label>
            <label class="check">
              <input type="radio" name="existing" value="Replace" checked={existing === 'Replace'} onChange={() => setExisting('Replace')} data-testid="restore-replace" />
              Replace them with the backup's
            </label>
          </fieldset>
          {admin && (
            <Field label="Cluster-scoped kinds to create (admins)" hint="e.g. ClusterRoleBinding, separated by commas; empty: only what the namespaces need">
              <input value={kinds} onInput={(e) => setKinds((e.currentTarget as HTMLInputElement).value)} data-testid="restore-kinds" />
            </Field>
          )}
          <ErrorBox error={previewError} />
          <div class="form-actions">
            <button type="button" class="btn" onClick={() => setStep(1)}>
              Back
            </button>
            <button type="button" class="btn btn-primary" disabled={!!previewError || namespaces.length === 0} onClick={() => setStep(3)} data-testid="restore-next-2">
              Next
            </button>
          </div>
        </div>
      )}
      {step === 3 && b && preview && (
        <div class="card form step-card" tabIndex={-1} aria-label="Step 3 of 3" data-testid="restore-step-3">
          <dl class="props">
            <div><dt>Backup</dt><dd class="mono">{preview.backup}</dd></div>
            <div><dt>Into cluster</dt><dd>{preview.cluster ?? `${b.clusterName} (its own)`}</dd></div>
            <div><dt>Namespaces</dt><dd>{(preview.namespaces ?? b.namespaces).join(', ')}</dd></div>
            <div><dt>Mapping</dt><dd data-testid="restore-review-mapping">{mapping(preview.namespaceMapping ?? {})}</dd></div>
            {preview.allowClusterKinds && <div><dt>Cluster-scoped kinds</dt><dd>{preview.allowClusterKinds.join(', ')}</dd></div>}
            <div><dt>Existing objects</dt><dd data-testid="restore-review-policy">{preview.existingResourcePolicy === 'Replace' ? 'replaced' : 'kept'}</dd></div>
          </dl>
          <ErrorBox error={error} />
          <div class="form-actions">
            <button type="button" class="btn" onClick={() => setStep(2)}>
              Back
            </button>
            <button
              type="button"
              class="btn btn-primary"
              disabled={busy}
              data-testid="restore-submit"
              onClick={async () => {
                setBusy(true);
                setError(undefined);
                try {
                  const r = await post<RestoreRecord>(orgPath(org, '/restores'), preview);
                  navigate(href('orgs', org, 'restores', r.id));
                } catch (e) {
                  setError(e);
                } finally {
                  setBusy(false);
                }
              }}
            >
              {busy ? 'Starting…' : 'Start restore'}
            </button>
          </div>
        </div>
      )}
    </section>
  );
}

export function RestoreProgress({ org, id }: { org: string; id: string }) {
  const r = useData(
    (signal) => get<RestoreRecord>(orgPath(org, `/restores/${enc(id)}`), undefined, signal),
    [org, id],
    (d) => (d && FINAL.includes(d.phase) ? undefined : 1500),
  );
  const rec = r.data;
  const c = rec?.counts;
  const done = c ? c.created + c.replaced + c.skipped + c.failed : 0;
  const final = rec && FINAL.includes(rec.phase);
  return (
    <section data-testid="restore-progress">
      <nav class="crumbs" aria-label="Breadcrumb">
        <a href={href('orgs', org, 'restores')}>Restores</a> <span aria-hidden="true">/</span> <span class="mono">{id}</span>
      </nav>
      <PageHeader title="Restore" />
      <ErrorBox error={r.error} />
      {!rec && r.loading && <Loading what="the restore" />}
      {rec && c && (
        <>
          <div class="detail-head">
            <h2 class="mono">{rec.id}</h2>
            <Badge state={rec.phase} testid="restore-phase" />
            {!final && <span class="muted small" role="status">updating…</span>}
          </div>
          <div class="progress-line" role="status" aria-live="polite">
            <span data-testid="restore-counts">
              {done} of {c.total || '?'} objects · {c.created} created · {c.replaced} replaced · {c.skipped} skipped · {c.failed} failed
            </span>
            <progress max={c.total || 1} value={final && !c.total ? 1 : done} aria-label="Restore progress" />
          </div>
          {rec.message && <Notice tone={rec.phase === 'Failed' ? 'bad' : 'info'}>{rec.message}</Notice>}
          <dl class="props">
            <div><dt>Backup</dt><dd class="mono"><a href={href('orgs', org, 'backups', rec.backup)}>{rec.backup}</a></dd></div>
            <div><dt>Into cluster</dt><dd>{rec.clusterName || rec.cluster}</dd></div>
            <div><dt>Location</dt><dd>{rec.locationName || rec.location}</dd></div>
            <div><dt>Namespaces</dt><dd>{rec.namespaces.length ? rec.namespaces.join(', ') : 'all of the backup'}</dd></div>
            <div><dt>Mapping</dt><dd data-testid="restore-mapping-shown">{mapping(rec.namespaceMapping)}</dd></div>
            <div><dt>Created</dt><dd>{fmtTime(rec.createdMs)}</dd></div>
            <div><dt>Completed</dt><dd>{rec.completedMs ? fmtTime(rec.completedMs) : '—'}</dd></div>
            <div><dt>Last heartbeat</dt><dd><Time at={rec.heartbeat} /></dd></div>
          </dl>
        </>
      )}
    </section>
  );
}
