import { useState } from 'preact/hooks';
import { get, type ClusterState, type FleetEntry, type FleetStatus } from '../api';
import { Badge, Empty, ErrorBox, Loading, PageHeader, Time, VirtualTable, stateLabel, type Column } from '../components';
import { me, useData } from '../store';

const STATES: ClusterState[] = ['Ready', 'Degraded', 'Unreachable', 'AgentMissing', 'AgentOutdated', 'Hibernated', 'Ineligible', 'Unknown', 'Retired'];
const ATTENTION: ClusterState[] = ['Unreachable', 'Degraded', 'AgentMissing', 'AgentOutdated', 'Ineligible'];
const REFRESH_MS = 5000;

const key = (e: FleetEntry) => `${e.org}\u0000${e.cluster}\u0000${e.id}`;
const cmp = (a: FleetEntry, b: FleetEntry) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0);

/** Every entry in `state` (or all), every page, in the API's order (org, name, id). */
async function entries(state: string | undefined, org: string | undefined, signal: AbortSignal): Promise<FleetEntry[]> {
  const out: FleetEntry[] = [];
  let after: string | undefined;
  for (let i = 0; i < 200; i++) {
    const p = await get<FleetStatus>('/v1/fleet/status', { state, org, limit: 1000, after }, signal);
    out.push(...p.items);
    if (!p.next) break;
    after = p.next;
  }
  return out;
}

const columns: Column<FleetEntry>[] = [
  { header: 'Org', width: 'minmax(80px, 0.8fr)', render: (e) => e.org },
  { header: 'Cluster', width: 'minmax(120px, 1.2fr)', cls: 'mono', render: (e) => <span title={e.id}>{e.cluster}</span> },
  { header: 'State', width: '140px', render: (e) => <Badge state={e.state} /> },
  { header: 'Reason', width: 'minmax(200px, 3fr)', cls: 'wrap-1', render: (e) => <span title={e.message ?? ''}>{e.message ?? '—'}</span> },
  { header: 'Last seen', width: '110px', render: (e) => <Time at={e.lastSeen} /> },
  { header: 'Agent', width: '80px', render: (e) => e.agentVersion ?? '—' },
  {
    header: 'Locations',
    width: '150px',
    render: (e) => (
      <span class="loc-counts" title={`${e.locations.valid} valid, ${e.locations.invalid} invalid, ${e.locations.pending} pending`}>
        {e.locations.valid} valid
        {e.locations.invalid ? <strong class="text-bad"> · {e.locations.invalid} invalid</strong> : null}
        {e.locations.pending ? <span class="muted"> · {e.locations.pending} pending</span> : null}
      </span>
    ),
  },
];

export function FleetPage() {
  const w = me.use();
  const orgs = w ? Object.keys(w.orgs).sort() : [];
  const [filter, setFilter] = useState<string>('attention');
  const [org, setOrg] = useState<string>('');

  const summary = useData(
    async (signal) => {
      // One request: the counts overall and per org (orgs without clusters count zero).
      const all = await get<FleetStatus>('/v1/fleet/status', { limit: 1 }, signal);
      const per = orgs.map((o) => ({ org: o, counts: all.orgCounts?.[o] ?? {} }));
      return { all, per };
    },
    [orgs.join(',')],
    REFRESH_MS,
  );

  const list = useData(
    async (signal) => {
      const o = org || undefined;
      if (filter === 'all') return entries(undefined, o, signal);
      if (filter === 'attention') {
        const parts = await Promise.all(ATTENTION.map((s) => entries(s, o, signal)));
        return parts.flat().sort(cmp);
      }
      return entries(filter, o, signal);
    },
    [filter, org],
    REFRESH_MS,
  );

  const counts = summary.data?.all.counts ?? {};
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const shown = STATES.filter((s) => (counts[s] ?? 0) > 0 || ['Ready', 'Degraded', 'Unreachable'].includes(s));

  return (
    <section data-testid="fleet-page">
      <PageHeader title="Fleet">
        <span class="muted small" data-testid="fleet-generated">
          {summary.data?.all.generatedAt ? (
            <>
              Snapshot <Time at={summary.data.all.generatedAt} /> · refreshes every {REFRESH_MS / 1000}s
            </>
          ) : (
            'No snapshot yet'
          )}
        </span>
      </PageHeader>
      <ErrorBox error={summary.error} />
      {!summary.data && summary.loading && <Loading what="the fleet status" />}
      {summary.data && (
        <>
          <div class="stats" data-testid="fleet-counts">
            <div class="stat stat-total">
              <span class="stat-value" data-testid="fleet-total">
                {total}
              </span>
              <span class="stat-label">Clusters</span>
            </div>
            {shown.map((s) => (
              <button
                type="button"
                key={s}
                class={`stat stat-btn ${filter === s ? 'stat-active' : ''}`}
                data-testid={`fleet-count-${s}`}
                data-count={counts[s] ?? 0}
                aria-pressed={filter === s}
                onClick={() => setFilter(filter === s ? 'attention' : s)}
              >
                <span class="stat-value">{counts[s] ?? 0}</span>
                <Badge state={s} />
              </button>
            ))}
          </div>
          <h2>By org</h2>
          <div class="table-wrap">
            <table class="grid" data-testid="fleet-orgs">
              <thead>
                <tr>
                  <th scope="col">Org</th>
                  {shown.map((s) => (
                    <th scope="col" class="num" key={s}>
                      {stateLabel(s)}
                    </th>
                  ))}
                  <th scope="col" class="num">
                    Total
                  </th>
                </tr>
              </thead>
              <tbody>
                {summary.data.per.map((p) => (
                  <tr key={p.org} data-testid="fleet-org-row">
                    <th scope="row">{p.org}</th>
                    {shown.map((s) => (
                      <td class={`num ${(p.counts[s] ?? 0) > 0 && ['Unreachable', 'Degraded', 'AgentMissing'].includes(s) ? 'text-bad strong' : ''}`} key={s}>
                        {p.counts[s] ?? 0}
                      </td>
                    ))}
                    <td class="num">{Object.values(p.counts).reduce((a, b) => a + b, 0)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
      <div class="section-head">
        <h2>{filter === 'attention' ? 'Clusters needing attention' : filter === 'all' ? 'All clusters' : `${stateLabel(filter)} clusters`}</h2>
        <div class="filters">
          <label class="inline-field">
            <span>Show</span>
            <select value={filter} onChange={(e) => setFilter((e.currentTarget as HTMLSelectElement).value)} data-testid="fleet-filter">
              <option value="attention">Needing attention</option>
              <option value="all">All clusters</option>
              {STATES.map((s) => (
                <option key={s} value={s}>
                  {stateLabel(s)}
                </option>
              ))}
            </select>
          </label>
          <label class="inline-field">
            <span>Org</span>
            <select value={org} onChange={(e) => setOrg((e.currentTarget as HTMLSelectElement).value)} data-testid="fleet-org-filter">
              <option value="">All orgs</option>
              {orgs.map((o) => (
                <option key={o} value={o}>
                  {o}
                </option>
              ))}
            </select>
          </label>
        </div>
      </div>
      <ErrorBox error={list.error} />
      {!list.data && list.loading && <Loading what="clusters" />}
      {list.data && list.data.length === 0 && <Empty>No clusters {filter === 'attention' ? 'need attention' : 'in this state'}.</Empty>}
      {list.data && list.data.length > 0 && (
        <>
          <p class="muted small" data-testid="fleet-list-count">
            {list.data.length} cluster{list.data.length === 1 ? '' : 's'}
          </p>
          <VirtualTable rows={list.data} columns={columns} rowKey={key} label="Clusters" testid="fleet-list" />
        </>
      )}
    </section>
  );
}
