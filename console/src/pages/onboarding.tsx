import { useState } from 'preact/hooks';
import { all, del, get, orgPath, post, enc, type ClusterRecord, type CreateDiscovery, type DiscoveryView, type Page } from '../api';
import { Badge, ConfirmButton, Empty, ErrorBox, Field, Loading, PageHeader, Time, VirtualTable, type Column } from '../components';
import { useCan, useData } from '../store';

function DiscoveryState({ d }: { d: DiscoveryView }) {
  const s = d.status;
  const text = s.state === 'Running' ? `Running · ${s.shoots} shoot${s.shoots === 1 ? '' : 's'}` : s.state;
  return (
    <div class="stack-tight">
      <Badge state={s.state} text={text} testid="discovery-state" />
      {s.message && <span class="reason" data-testid="discovery-reason">{s.message}</span>}
    </div>
  );
}

function CreateDiscoveryForm({ org, onDone }: { org: string; onDone: () => void }) {
  const [f, setF] = useState({ id: '', project: '', credential: '', interval: '' });
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const on = (k: keyof typeof f) => (e: Event) => setF({ ...f, [k]: (e.currentTarget as HTMLInputElement).value });
  return (
    <form
      class="card form"
      data-testid="discovery-form"
      onSubmit={async (e) => {
        e.preventDefault();
        setBusy(true);
        setError(undefined);
        try {
          const body: CreateDiscovery = { id: f.id.trim(), project: f.project.trim(), credential: f.credential.trim() };
          if (f.interval.trim()) body.intervalSecs = Number(f.interval);
          await post(orgPath(org, '/discoveries'), body);
          setF({ id: '', project: '', credential: '', interval: '' });
          onDone();
        } catch (err) {
          setError(err);
        } finally {
          setBusy(false);
        }
      }}
    >
      <h2>Add a Gardener project</h2>
      <div class="form-row">
        <Field label="Name" hint="A DNS label, unique in the org">
          <input required pattern="[a-z0-9]([-a-z0-9]*[a-z0-9])?" maxLength={63} value={f.id} onInput={on('id')} data-testid="discovery-id" />
        </Field>
        <Field label="Gardener project">
          <input required pattern="[a-z0-9]([-a-z0-9]*[a-z0-9])?" maxLength={63} value={f.project} onInput={on('project')} data-testid="discovery-project" />
        </Field>
        <Field label="Garden credential" hint="Its name in the server's configuration">
          <input required value={f.credential} onInput={on('credential')} data-testid="discovery-credential" />
        </Field>
        <Field label="Interval (seconds)" hint="Default 60, at least 5">
          <input type="number" min={5} max={86400} value={f.interval} onInput={on('interval')} data-testid="discovery-interval" />
        </Field>
      </div>
      <ErrorBox error={error} />
      <div class="form-actions">
        <button class="btn btn-primary" type="submit" disabled={busy} data-testid="discovery-submit">
          {busy ? 'Adding…' : 'Add discovery'}
        </button>
      </div>
    </form>
  );
}

const clusterColumns: Column<ClusterRecord>[] = [
  { header: 'Shoot', width: 'minmax(120px, 1.2fr)', cls: 'mono', render: (c) => <span title={c.id}>{c.name}</span> },
  { header: 'Discovery', width: 'minmax(80px, 0.7fr)', render: (c) => c.discovery ?? c.source },
  { header: 'Project namespace', width: 'minmax(100px, 0.9fr)', render: (c) => c.namespace ?? '—' },
  { header: 'Provider', width: '80px', render: (c) => c.providerType || '—' },
  { header: 'Kubernetes', width: '100px', render: (c) => c.kubernetesVersion || '—' },
  { header: 'Region', width: '100px', render: (c) => c.region || '—' },
  {
    header: 'Eligibility',
    width: 'minmax(200px, 2.4fr)',
    cls: 'wrap-1',
    render: (c) =>
      c.ineligible ? (
        <span title={c.ineligible}>
          <Badge state="Ineligible" text="Not eligible" /> <span class="reason">{c.ineligible}</span>
        </span>
      ) : c.retiredAt ? (
        <Badge state="Retired" />
      ) : (
        <Badge state="Eligible" />
      ),
  },
  { header: 'State', width: '140px', render: (c) => <Badge state={c.status.state} /> },
  { header: 'First seen', width: '100px', render: (c) => <Time at={c.firstSeen} /> },
];

export function OnboardingPage({ org }: { org: string }) {
  const admin = useCan(org, 'admin');
  const [only, setOnly] = useState('');
  const discoveries = useData((signal) => get<Page<DiscoveryView>>(orgPath(org, '/discoveries'), { limit: 1000 }, signal), [org], 5000);
  const clusters = useData((signal) => all<ClusterRecord>(orgPath(org, '/clusters'), {}, 50000, signal), [org], 30000);
  const [error, setError] = useState<unknown>();
  const rows = (clusters.data ?? []).filter((c) => !only || c.discovery === only);

  return (
    <section data-testid="onboarding-page">
      <PageHeader title={`Onboarding · ${org}`} />
      <p class="lead">Gardener projects whose shoots become this org's clusters. Each discovery lists the project's shoots, eligible or not, with the reason.</p>
      <h2>Discoveries</h2>
      <ErrorBox error={discoveries.error} />
      <ErrorBox error={error} />
      {!discoveries.data && discoveries.loading && <Loading what="discoveries" />}
      {discoveries.data && discoveries.data.items.length === 0 && <Empty>No discoveries yet.</Empty>}
      {discoveries.data && discoveries.data.items.length > 0 && (
        <div class="table-wrap">
          <table class="grid" data-testid="discoveries-table">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Project</th>
                <th scope="col">Garden credential</th>
                <th scope="col" class="num">
                  Interval
                </th>
                <th scope="col">State</th>
                <th scope="col">Since</th>
                <th scope="col">Created</th>
                {admin && (
                  <th scope="col">
                    <span class="sr-only">Actions</span>
                  </th>
                )}
              </tr>
            </thead>
            <tbody>
              {discoveries.data.items.map((d) => (
                <tr key={d.id} data-testid="discovery-row" data-id={d.id}>
                  <th scope="row" class="mono">
                    {d.id}
                  </th>
                  <td>{d.project}</td>
                  <td class="mono">{d.credential}</td>
                  <td class="num">{d.intervalSecs}s</td>
                  <td>
                    <DiscoveryState d={d} />
                  </td>
                  <td>
                    <Time at={d.status.since} />
                  </td>
                  <td>
                    <Time at={d.createdAt} />
                  </td>
                  {admin && (
                    <td class="actions">
                      <ConfirmButton
                        label="Delete"
                        what={`discovery ${d.id}`}
                        confirm={`Delete ${d.id}?`}
                        testid="discovery-delete"
                        onConfirm={async () => {
                          setError(undefined);
                          try {
                            await del(orgPath(org, `/discoveries/${enc(d.id)}`));
                            discoveries.reload();
                          } catch (e) {
                            setError(e);
                          }
                        }}
                      />
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {admin && <CreateDiscoveryForm org={org} onDone={discoveries.reload} />}
      <div class="section-head">
        <h2>Discovered shoots</h2>
        <div class="filters">
          <label class="inline-field">
            <span>Discovery</span>
            <select value={only} onChange={(e) => setOnly((e.currentTarget as HTMLSelectElement).value)} data-testid="shoots-discovery-filter">
              <option value="">All</option>
              {(discoveries.data?.items ?? []).map((d) => (
                <option key={d.id} value={d.id}>
                  {d.id}
                </option>
              ))}
            </select>
          </label>
        </div>
      </div>
      <ErrorBox error={clusters.error} />
      {!clusters.data && clusters.loading && <Loading what="clusters" />}
      {clusters.data && rows.length === 0 && <Empty>No shoots discovered yet.</Empty>}
      {rows.length > 0 && (
        <>
          <p class="muted small">
            {rows.length} shoot{rows.length === 1 ? '' : 's'}, {rows.filter((c) => !c.ineligible && !c.retiredAt).length} eligible
          </p>
          <VirtualTable rows={rows} columns={clusterColumns} rowKey={(c) => c.id} label="Discovered shoots" testid="shoots" />
        </>
      )}
    </section>
  );
}
