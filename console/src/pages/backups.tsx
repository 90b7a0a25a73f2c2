import { useRef, useState } from 'preact/hooks';
import {
  all, del, enc, get, orgPath, post,
  type BackupRecord, type ClusterRecord, type LocationStatus, type LocationView, type Page, type TimeBracket,
} from '../api';
import {
  Badge, BracketPicker, ConfirmButton, Empty, ErrorBox, Field, Loading, Notice, PageHeader, Time, ViewTabs, bracketLabel, bytes, fmtTime, splitList,
} from '../components';
import { href, navigate } from '../router';
import { prefs, useCan, useData } from '../store';
import { selectorOf } from './locations';

export const BACKUP_PHASES = ['Pending', 'InProgress', 'Success', 'PartialSuccess', 'Failed', 'Missed', 'Deleting', 'Stalled'];
const ACTIVE = ['Pending', 'InProgress', 'Deleting'];

/** The list query of a time bracket: a preset by name, a custom one by from and to. */
export function bracketQuery(b: TimeBracket): Record<string, string | undefined> {
  if (b.kind === 'custom') return { from: b.from ?? undefined, to: b.to ?? undefined };
  return { bracket: b.kind };
}

export interface Filters {
  cluster: string;
  location: string;
  namespace: string;
  phase: string;
}

/** Cluster and location choices for the filters. */
export function useChoices(org: string) {
  return useData(
    async (signal) => {
      const [clusters, locations] = await Promise.all([
        all<ClusterRecord>(orgPath(org, '/clusters'), {}, 50000, signal),
        get<Page<LocationView>>(orgPath(org, '/locations'), { limit: 1000 }, signal),
      ]);
      const sorted = clusters.map((c) => ({ name: c.name, id: c.id })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      return { clusters: sorted, locations: locations.items.map((l) => l.name) };
    },
    [org],
  );
}

export function FilterBar({ org, f, setF, phases, namespace = true }: { org: string; f: Filters; setF: (f: Filters) => void; phases: string[]; namespace?: boolean }) {
  const choices = useChoices(org);
  const on = (k: keyof Filters) => (e: Event) => setF({ ...f, [k]: (e.currentTarget as HTMLInputElement).value });
  return (
    <div class="filters" role="group" aria-label="Filters">
      <label class="inline-field">
        <span>Cluster</span>
        <select value={f.cluster} onChange={on('cluster')} data-testid="filter-cluster">
          <option value="">All</option>
          {(choices.data?.clusters ?? []).map((c) => (
            <option key={c.id} value={c.name}>
              {c.name}
            </option>
          ))}
        </select>
      </label>
      <label class="inline-field">
        <span>Location</span>
        <select value={f.location} onChange={on('location')} data-testid="filter-location">
          <option value="">All</option>
          {(choices.data?.locations ?? []).map((c) => (
            <option key={c} value={c}>
              {c}
            </option>
          ))}
        </select>
      </label>
      {namespace && (
        <label class="inline-field">
          <span>Namespace</span>
          <input type="search" size={12} value={f.namespace} onChange={on('namespace')} data-testid="filter-namespace" />
        </label>
      )}
      <label class="inline-field">
        <span>Phase</span>
        <select value={f.phase} onChange={on('phase')} data-testid="filter-phase">
          <option value="">All</option>
          {phases.map((p) => (
            <option key={p} value={p}>
              {p}
            </option>
          ))}
        </select>
      </label>
    </div>
  );
}

function BackupNowForm({ org, onDone }: { org: string; onDone: () => void }) {
  const choices = useChoices(org);
  const [assign, setAssign] = useState<{ kind: 'all' | 'labels' | 'names'; labels: string; names: string }>({ kind: 'names', labels: '', names: '' });
  const [ns, setNs] = useState('');
  const [loc, setLoc] = useState('');
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  return (
    <form
      class="card form"
      data-testid="backup-form"
      onSubmit={async (e) => {
        e.preventDefault();
        setBusy(true);
        setError(undefined);
        try {
          await post(orgPath(org, '/backups'), { clusters: selectorOf(assign), namespaces: splitList(ns), location: loc || choices.data?.locations[0] });
          onDone();
        } catch (err) {
          setError(err);
        } finally {
          setBusy(false);
        }
      }}
    >
      <h2>Back up now</h2>
      <div class="form-row">
        <Field label="Clusters" hint="Names, separated by commas">
          <input required value={assign.names} onInput={(e) => setAssign({ ...assign, names: (e.currentTarget as HTMLInputElement).value })} data-testid="backup-clusters" />
        </Field>
        <Field label="Namespaces" hint="Separated by commas">
          <input required value={ns} onInput={(e) => setNs((e.currentTarget as HTMLInputElement).value)} data-testid="backup-namespaces" />
        </Field>
        <Field label="Location">
          <select value={loc} onChange={(e) => setLoc((e.currentTarget as HTMLSelectElement).value)} data-testid="backup-location">
            {(choices.data?.locations ?? []).map((l) => (
              <option key={l} value={l}>
                {l}
              </option>
            ))}
          </select>
        </Field>
      </div>
      <ErrorBox error={error} />
      <div class="form-actions">
        <button class="btn btn-primary" type="submit" disabled={busy} data-testid="backup-submit">
          Start backup
        </button>
      </div>
    </form>
  );
}

export function BackupsPage({ org }: { org: string }) {
  const p = prefs.use();
  const operator = useCan(org, 'operator');
  const [f, setF] = useState<Filters>({ cluster: '', location: '', namespace: '', phase: '' });
  const [creating, setCreating] = useState(false);
  const pages = useRef(1);
  const [more, setMore] = useState(false);
  const q = { view: p.tab, ...bracketQuery(p.timeBracket), cluster: f.cluster, location: f.location, namespace: f.namespace.trim(), state: f.phase };
  const list = useData(
    async (signal) => {
      const items: BackupRecord[] = [];
      let after: string | undefined;
      let next: string | null | undefined;
      for (let i = 0; i < pages.current; i++) {
        const pg = await get<Page<BackupRecord>>(orgPath(org, '/backups'), { ...q, limit: 100, after }, signal);
        items.push(...pg.items);
        next = pg.next;
        if (!next) break;
        after = next;
      }
      return { items, next };
    },
    [org, q],
    (d) => (d && d.items.some((b) => ACTIVE.includes(b.phase)) ? 3000 : 15000),
  );
  const vm = p.tab === 'vms';
  return (
    <section data-testid="backups-page">
      <PageHeader title={`Backups · ${org}`}>
        {operator && (
          <>
            <button type="button" class="btn" onClick={() => setCreating(!creating)} aria-expanded={creating} data-testid="backup-new">
              Back up now
            </button>
            <a class="btn btn-primary" href={href('orgs', org, 'restores', 'new')} data-testid="restore-new">
              Restore…
            </a>
          </>
        )}
      </PageHeader>
      {creating && <BackupNowForm org={org} onDone={() => { setCreating(false); list.reload(); }} />}
      <div class="toolbar">
        <ViewTabs />
        <BracketPicker />
      </div>
      <FilterBar org={org} f={f} setF={(x) => { pages.current = 1; setF(x); }} phases={BACKUP_PHASES} />
      <ErrorBox error={list.error} />
      {!list.data && list.loading && <Loading what="backups" />}
      {list.data && list.data.items.length === 0 && (
        <Empty>
          No {vm ? 'virtual-machine' : 'namespace'} backups in {bracketLabel(p.timeBracket).toLowerCase()}
          {f.cluster || f.location || f.namespace || f.phase ? ' matching the filters' : ''}.
        </Empty>
      )}
      {list.data && list.data.items.length > 0 && (
        <div class="table-wrap">
          <table class="grid" data-testid="backups-table" data-view={p.tab}>
            <thead>
              <tr>
                <th scope="col">Backup</th>
                <th scope="col">Cluster</th>
                <th scope="col">Location</th>
                <th scope="col">Namespaces</th>
                <th scope="col">Phase</th>
                <th scope="col" class="num">
                  Objects
                </th>
                {vm && (
                  <th scope="col" class="num">
                    VMs
                  </th>
                )}
                <th scope="col" class="num">
                  Stored
                </th>
                <th scope="col">Created</th>
                <th scope="col">Schedule</th>
                {operator && (
                  <th scope="col">
                    <span class="sr-only">Actions</span>
                  </th>
                )}
              </tr>
            </thead>
            <tbody>
              {list.data.items.map((b) => (
                <tr key={b.id} data-testid="backup-row" data-id={b.id} data-phase={b.phase}>
                  <th scope="row" class="mono small">
                    <a href={href('orgs', org, 'backups', b.id)}>{b.id}</a>
                    {b.synced && <span class="tag">synced</span>}
                  </th>
                  <td>{b.clusterName || b.cluster}</td>
                  <td>{b.locationName || b.location}</td>
                  <td>{b.namespaces.join(', ')}</td>
                  <td>
                    <span title={b.message ?? ''}>
                      <Badge state={b.phase} />
                    </span>
                    {b.missingObjects > 0 && <span class="text-bad small"> {b.missingObjects} missing</span>}
                    {b.message && <div class="reason reason-clip" title={b.message}>{b.message}</div>}
                  </td>
                  <td class="num">{b.objects}</td>
                  {vm && <td class="num">{b.virtualMachines}</td>}
                  <td class="num">{bytes(b.storedBytes)}</td>
                  <td>
                    <Time at={b.createdMs} />
                  </td>
                  <td>{b.schedule ?? '—'}</td>
                  {operator && (
                    <td class="actions">
                      {(b.phase === 'Success' || b.phase === 'PartialSuccess') && (
                        <a class="btn btn-small" href={href('orgs', org, 'restores', 'new') + `?backup=${enc(b.id)}`} aria-label={`Restore ${b.id}`}>
                          Restore
                        </a>
                      )}
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {list.data?.next && (
        <button
          type="button"
          class="btn"
          disabled={more}
          onClick={async () => {
            pages.current++;
            setMore(true);
            list.reload();
            setTimeout(() => setMore(false), 300);
          }}
          data-testid="backups-more"
        >
          Load more
        </button>
      )}
    </section>
  );
}

export function BackupDetail({ org, id }: { org: string; id: string }) {
  const operator = useCan(org, 'operator');
  const [error, setError] = useState<unknown>();
  const b = useData(
    (signal) => get<BackupRecord>(orgPath(org, `/backups/${enc(id)}`), undefined, signal),
    [org, id],
    (d) => (d && ACTIVE.includes(d.phase) ? 2000 : 15000),
  );
  const rec = b.data;
  const verify = useData(
    async (signal) => {
      if (!rec?.locationName) return null;
      const page = await get<Page<LocationStatus>>(orgPath(org, `/locations/${enc(rec.locationName)}/status`), { cluster: rec.cluster }, signal);
      return page.items[0] ?? null;
    },
    [org, rec?.locationName, rec?.cluster],
  );
  const v = verify.data?.verify;
  const missingHere = v && rec?.backupId ? v.missingByBackup[rec.backupId] ?? 0 : 0;
  return (
    <section data-testid="backup-detail">
      <nav class="crumbs" aria-label="Breadcrumb">
        <a href={href('orgs', org, 'backups')}>Backups</a> <span aria-hidden="true">/</span> <span class="mono">{id}</span>
      </nav>
      <PageHeader title="Backup">
        {operator && rec && (rec.phase === 'Success' || rec.phase === 'PartialSuccess') && (
          <a class="btn btn-primary" href={href('orgs', org, 'restores', 'new') + `?backup=${enc(id)}`} data-testid="backup-restore">
            Restore…
          </a>
        )}
        {operator && rec && rec.phase !== 'Deleting' && (
          <ConfirmButton
            label="Delete"
            confirm="Delete this backup?"
            testid="backup-delete"
            onConfirm={async () => {
              setError(undefined);
              try {
                await del(orgPath(org, `/backups/${enc(id)}`));
                b.reload();
              } catch (e) {
                setError(e);
              }
            }}
          />
        )}
      </PageHeader>
      <ErrorBox error={b.error} />
      <ErrorBox error={error} />
      {!rec && b.loading && <Loading what="the backup" />}
      {rec && (
        <>
          <div class="detail-head">
            <h2 class="mono">{rec.id}</h2>
            <Badge state={rec.phase} testid="backup-phase" />
            {rec.stage && <span class="muted">({rec.stage})</span>}
          </div>
          {rec.message && <Notice tone={rec.phase === 'Failed' || rec.phase === 'Missed' ? 'bad' : 'warn'}>{rec.message}</Notice>}
          <dl class="props">
            <div><dt>Cluster</dt><dd>{rec.clusterName || rec.cluster}</dd></div>
            {rec.originCluster && <div><dt>Made by</dt><dd>{rec.originCluster}</dd></div>}
            <div><dt>Location</dt><dd><a href={href('orgs', org, 'locations', rec.locationName || rec.location)}>{rec.locationName || rec.location}</a></dd></div>
            <div><dt>Id on the location</dt><dd class="mono">{rec.backupId ?? '—'}</dd></div>
            <div><dt>Namespaces</dt><dd>{rec.namespaces.join(', ') || '—'}</dd></div>
            <div><dt>View</dt><dd>{rec.view === 'vms' ? 'Virtual machines' : 'Namespaces'}</dd></div>
            <div><dt>Schedule</dt><dd>{rec.schedule ?? '—'}</dd></div>
            <div><dt>Created</dt><dd>{fmtTime(rec.createdMs)}</dd></div>
            <div><dt>Completed</dt><dd>{rec.completedMs ? fmtTime(rec.completedMs) : '—'}</dd></div>
            <div><dt>Synced</dt><dd>{rec.synced ? 'yes, found in the location' : 'no'}</dd></div>
          </dl>
          <h2>Contents</h2>
          <div class="stats">
            <div class="stat"><span class="stat-value" data-testid="backup-objects">{rec.objects}</span><span class="stat-label">Objects</span></div>
            <div class="stat"><span class="stat-value">{rec.virtualMachines}</span><span class="stat-label">Virtual machines</span></div>
            <div class="stat"><span class="stat-value">{bytes(rec.bytes)}</span><span class="stat-label">Volume data</span></div>
            <div class="stat"><span class="stat-value">{bytes(rec.storedBytes)}</span><span class="stat-label">Added to the location</span></div>
          </div>
          <h2>Volumes</h2>
          {rec.volumes && rec.volumes.length > 0 ? (
            <div class="table-wrap"><table class="grid" data-testid="backup-volumes">
              <caption class="sr-only">Persistent volumes of the backup</caption>
              <thead>
                <tr>
                  <th scope="col">Namespace</th>
                  <th scope="col">Claim</th>
                  <th scope="col">Result</th>
                  <th scope="col" class="num">Files</th>
                  <th scope="col" class="num">Data</th>
                  <th scope="col">Message</th>
                </tr>
              </thead>
              <tbody>
                {rec.volumes.map((vol) => (
                  <tr key={`${vol.namespace}/${vol.claim}`} data-testid="backup-volume-row">
                    <td>{vol.namespace}</td>
                    <td class="mono">{vol.claim}</td>
                    <td><Badge state={vol.phase} /></td>
                    <td class="num">{vol.files}</td>
                    <td class="num">{bytes(vol.bytes)}</td>
                    <td class="reason">{vol.message ?? ''}</td>
                  </tr>
                ))}
              </tbody>
            </table></div>
          ) : (
            <p class="muted" data-testid="backup-no-volumes">
              {rec.phase === 'Success' || rec.phase === 'PartialSuccess' ? 'No persistent volume was backed up with it.' : 'No volume reported yet.'}
            </p>
          )}
          <h2>Verify</h2>
          <div data-testid="backup-verify">
            {rec.missingObjects > 0 ? (
              <Notice tone="bad">The last verify found {rec.missingObjects} object{rec.missingObjects === 1 ? '' : 's'} of this backup missing in the location.</Notice>
            ) : null}
            {v ? (
              <dl class="props">
                <div><dt>Last verify on {rec.clusterName}</dt><dd><Badge state={v.phase} /></dd></div>
                <div><dt>Completed</dt><dd><Time at={v.completed} /></dd></div>
                <div><dt>Backups checked</dt><dd>{v.backupsChecked}</dd></div>
                <div><dt>Missing objects of this backup</dt><dd class={missingHere ? 'text-bad strong' : ''}>{missingHere}</dd></div>
                {v.message && <div><dt>Message</dt><dd>{v.message}</dd></div>}
              </dl>
            ) : verify.loading ? (
              <Loading what="the verify result" />
            ) : (
              <p class="muted">The location has not been verified on this cluster yet.</p>
            )}
            <ErrorBox error={verify.error} />
          </div>
          {operator && (
            <p>
              <button type="button" class="btn" onClick={() => navigate(href('orgs', org, 'locations', rec.locationName || rec.location))}>
                Verify the location…
              </button>
            </p>
          )}
        </>
      )}
    </section>
  );
}
