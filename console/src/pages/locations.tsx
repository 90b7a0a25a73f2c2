import { useMemo, useState } from 'preact/hooks';
import {
  all, del, enc, get, orgPath, post,
  type ClusterRecord, type ClusterSelectorInput, type CreateLocation, type LocationStatus, type LocationView, type Page,
} from '../api';
import {
  Badge, ConfirmButton, CopyButton, Empty, ErrorBox, Field, Loading, Notice, PageHeader, Time, VirtualTable,
  parseLabels, selectorText, splitList, type Column,
} from '../components';
import { href, navigate } from '../router';
import { useCan, useData } from '../store';

export const AGENT_SUBJECT = 'system:serviceaccount:pxb-system:pxb-agent';
export const AUDIENCE = 'api://AzureADTokenExchange';

/** Whether a location is reached with Workload Identity (federated Azure). */
const isFederatedAzure = (l: LocationView) => l.mode === 'federated' && l.provider === 'azure';

function ModeBadge({ l }: { l: LocationView }) {
  return <span class={`tag tag-${l.mode}`}>{l.mode === 'federated' ? 'Federated' : 'Classic'}</span>;
}

type Assign = 'all' | 'labels' | 'names';

function SelectorInputs({ value, onChange, prefix }: {
  value: { kind: Assign; labels: string; names: string };
  onChange: (v: { kind: Assign; labels: string; names: string }) => void;
  prefix: string;
}) {
  return (
    <fieldset class="fieldset">
      <legend>Assign to clusters</legend>
      <div class="radios">
        {(['all', 'labels', 'names'] as Assign[]).map((k) => (
          <label key={k} class="radio">
            <input type="radio" name={`${prefix}-assign`} value={k} checked={value.kind === k} onChange={() => onChange({ ...value, kind: k })} data-testid={`${prefix}-assign-${k}`} />
            {k === 'all' ? 'All clusters of the org' : k === 'labels' ? 'Clusters with labels' : 'Clusters by name'}
          </label>
        ))}
      </div>
      {value.kind === 'labels' && (
        <Field label="Labels" hint="key=value, separated by commas or new lines; a cluster needs all of them">
          <textarea rows={2} value={value.labels} onInput={(e) => onChange({ ...value, labels: (e.currentTarget as HTMLTextAreaElement).value })} data-testid={`${prefix}-labels`} />
        </Field>
      )}
      {value.kind === 'names' && (
        <Field label="Cluster names" hint="Separated by commas or spaces">
          <input value={value.names} onInput={(e) => onChange({ ...value, names: (e.currentTarget as HTMLInputElement).value })} data-testid={`${prefix}-names`} />
        </Field>
      )}
    </fieldset>
  );
}

export function selectorOf(v: { kind: Assign; labels: string; names: string }): ClusterSelectorInput {
  if (v.kind === 'all') return { all: true };
  if (v.kind === 'labels') {
    const labels = parseLabels(v.labels);
    if (!Object.keys(labels).length) throw new Error('Give at least one label.');
    return { labels };
  }
  const names = splitList(v.names);
  if (!names.length) throw new Error('Give at least one cluster name.');
  return { names };
}

function CreateLocationForm({ org, onDone }: { org: string; onDone: (name: string) => void }) {
  const [f, setF] = useState({
    name: '', mode: 'federated', provider: 'azure', account: '', container: '', prefix: '', endpoint: '',
    clientId: '', tenantId: '', perCluster: '', credKind: 'accountKey', secret: '', sync: false,
  });
  const [assign, setAssign] = useState<{ kind: Assign; labels: string; names: string }>({ kind: 'all', labels: '', names: '' });
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const on = (k: keyof typeof f) => (e: Event) => setF({ ...f, [k]: (e.currentTarget as HTMLInputElement).value });
  const azure = f.provider === 'azure';
  const classic = f.mode === 'classic';
  return (
    <form
      class="card form"
      data-testid="location-form"
      onSubmit={async (e) => {
        e.preventDefault();
        setBusy(true);
        setError(undefined);
        try {
          const opt = (s: string) => (s.trim() ? s.trim() : null);
          const body: CreateLocation = {
            name: f.name.trim(),
            provider: f.provider as 'azure' | 'file',
            container: f.container.trim(),
            clusters: selectorOf(assign),
            mode: f.mode as 'federated' | 'classic',
            prefix: opt(f.prefix),
            sync: f.sync,
          };
          if (azure) {
            body.account = opt(f.account);
            body.endpoint = opt(f.endpoint);
            if (!classic) {
              body.clientId = opt(f.clientId);
              body.tenantId = opt(f.tenantId);
              const m = parseLabels(f.perCluster);
              if (Object.keys(m).length) body.clusterClientIds = m;
            } else if (f.secret.trim()) {
              body.credential = f.credKind === 'accountKey' ? { accountKey: f.secret.trim() } : { sasToken: f.secret.trim() };
            }
          }
          const l = await post<LocationView>(orgPath(org, '/locations'), body);
          onDone(l.name);
        } catch (err) {
          setError(err);
        } finally {
          setBusy(false);
        }
      }}
    >
      <h2>New backup location</h2>
      <div class="form-row">
        <Field label="Name" hint="A DNS label; the BackupLocation on each cluster gets it">
          <input required pattern="[a-z0-9]([-a-z0-9]*[a-z0-9])?" maxLength={63} value={f.name} onInput={on('name')} data-testid="location-name" />
        </Field>
        <Field label="Mode">
          <select value={f.mode} onChange={on('mode')} data-testid="location-mode">
            <option value="federated">Federated (Workload Identity)</option>
            <option value="classic">Classic (stored credential)</option>
          </select>
        </Field>
        <Field label="Provider">
          <select value={f.provider} onChange={on('provider')} data-testid="location-provider">
            <option value="azure">Azure Blob</option>
            <option value="file">File (directory on the cluster)</option>
          </select>
        </Field>
      </div>
      <div class="form-row">
        {azure && (
          <Field label="Storage account">
            <input value={f.account} onInput={on('account')} maxLength={64} data-testid="location-account" />
          </Field>
        )}
        <Field label={azure ? 'Container' : 'Directory'} hint={azure ? undefined : 'An absolute path'}>
          <input required value={f.container} onInput={on('container')} data-testid="location-container" />
        </Field>
        <Field label="Prefix" hint="Optional">
          <input value={f.prefix} onInput={on('prefix')} data-testid="location-prefix" />
        </Field>
        {azure && (
          <Field label="Blob endpoint" hint="Optional, https://…">
            <input value={f.endpoint} onInput={on('endpoint')} data-testid="location-endpoint" />
          </Field>
        )}
      </div>
      {azure && !classic && (
        <div class="form-row">
          <Field label="Managed identity client id" hint="For every cluster, unless set per cluster">
            <input value={f.clientId} onInput={on('clientId')} class="mono" data-testid="location-client-id" />
          </Field>
          <Field label="Entra tenant id" hint="Optional">
            <input value={f.tenantId} onInput={on('tenantId')} class="mono" data-testid="location-tenant-id" />
          </Field>
          <Field label="Client id per cluster" hint="cluster=client-id, one per line (optional)">
            <textarea rows={2} value={f.perCluster} onInput={on('perCluster')} class="mono" data-testid="location-cluster-client-ids" />
          </Field>
        </div>
      )}
      {azure && classic && (
        <div class="form-row">
          <Field label="Credential">
            <select value={f.credKind} onChange={on('credKind')} data-testid="location-cred-kind">
              <option value="accountKey">Storage account key</option>
              <option value="sasToken">SAS token</option>
            </select>
          </Field>
          <Field label="Secret" hint="Stored encrypted, never shown again">
            <input type="password" autoComplete="off" value={f.secret} onInput={on('secret')} data-testid="location-secret" />
          </Field>
        </div>
      )}
      <SelectorInputs value={assign} onChange={setAssign} prefix="location" />
      <label class="check">
        <input type="checkbox" checked={f.sync} onChange={(e) => setF({ ...f, sync: (e.currentTarget as HTMLInputElement).checked })} data-testid="location-sync" />
        Import the backups already in it when it is first assigned to a cluster
      </label>
      <ErrorBox error={error} />
      <div class="form-actions">
        <button class="btn btn-primary" type="submit" disabled={busy} data-testid="location-submit">
          {busy ? 'Creating…' : 'Create location'}
        </button>
      </div>
    </form>
  );
}

export function LocationsPage({ org }: { org: string }) {
  const admin = useCan(org, 'admin');
  const [creating, setCreating] = useState(false);
  const list = useData((signal) => get<Page<LocationView>>(orgPath(org, '/locations'), { limit: 1000 }, signal), [org], 10000);
  return (
    <section data-testid="locations-page">
      <PageHeader title={`Backup locations · ${org}`}>
        {admin && (
          <button type="button" class="btn btn-primary" onClick={() => setCreating(!creating)} aria-expanded={creating} data-testid="location-new">
            {creating ? 'Close form' : 'New location'}
          </button>
        )}
      </PageHeader>
      {creating && admin && <CreateLocationForm org={org} onDone={(n) => navigate(href('orgs', org, 'locations', n))} />}
      <ErrorBox error={list.error} />
      {!list.data && list.loading && <Loading what="locations" />}
      {list.data && list.data.items.length === 0 && <Empty>No backup locations yet.</Empty>}
      {list.data && list.data.items.length > 0 && (
        <div class="table-wrap">
          <table class="grid" data-testid="locations-table">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Mode</th>
                <th scope="col">Where</th>
                <th scope="col">Identity client id</th>
                <th scope="col">Assigned to</th>
                <th scope="col">State</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {list.data.items.map((l) => (
                <tr key={l.id} data-testid="location-row" data-name={l.name}>
                  <th scope="row">
                    <a href={href('orgs', org, 'locations', l.name)} data-testid="location-link">
                      {l.name}
                    </a>
                  </th>
                  <td>
                    <ModeBadge l={l} />
                  </td>
                  <td class="mono small">
                    {l.provider === 'azure' ? (
                      <>
                        {l.account ?? '—'} / {l.container}
                        {l.prefix ? ` / ${l.prefix}` : ''}
                      </>
                    ) : (
                      <>
                        file {l.container}
                        {l.prefix ? ` / ${l.prefix}` : ''}
                      </>
                    )}
                  </td>
                  <td class="mono small">
                    {l.mode === 'classic' ? (l.hasCredential ? 'stored credential' : 'no credential') : l.clientId ?? '—'}
                    {Object.keys(l.clusterClientIds ?? {}).length > 0 && <span class="muted"> + {Object.keys(l.clusterClientIds ?? {}).length} per cluster</span>}
                  </td>
                  <td>{selectorText(l.clusters)}</td>
                  <td>{l.active ? <Badge state="Active" /> : <Badge state="Inactive" text={`Inactive: ${l.inactiveReason ?? ''}`} />}</td>
                  <td>
                    <Time at={l.createdAt} />
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

const activeValidation = (s: LocationStatus) => s.validation.phase === 'Requested';
const activeVerify = (s: LocationStatus) => !!s.verify && (s.verify.phase === 'Requested' || s.verify.phase === 'InProgress');
const activeSync = (s: LocationStatus) => !!s.sync && (s.sync.phase === 'Pending' || s.sync.phase === 'InProgress');

function Progress({ label, done, total, testid }: { label: string; done: number; total: number; testid: string }) {
  return (
    <div class="progress-line" data-testid={testid} role="status">
      <span>
        {label}: {done} of {total} clusters answered
      </span>
      <progress max={total || 1} value={done} aria-label={label} />
    </div>
  );
}

export function LocationDetail({ org, name }: { org: string; name: string }) {
  const operator = useCan(org, 'operator');
  const admin = useCan(org, 'admin');
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState('');
  const loc = useData((signal) => get<LocationView>(orgPath(org, `/locations/${enc(name)}`), undefined, signal), [org, name], 15000);
  const status = useData(
    (signal) => all<LocationStatus>(orgPath(org, `/locations/${enc(name)}/status`), {}, 50000, signal),
    [org, name],
    (d) => (d && d.some((s) => activeValidation(s) || activeVerify(s) || activeSync(s)) ? 2000 : 10000),
  );
  const rows = status.data ?? [];
  const vActive = rows.filter(activeValidation).length;
  const fActive = rows.filter(activeVerify).length;
  const sActive = rows.filter(activeSync).length;

  const act = async (what: string, f: () => Promise<unknown>) => {
    setBusy(what);
    setError(undefined);
    try {
      await f();
      status.reload();
      loc.reload();
    } catch (e) {
      setError(e);
    } finally {
      setBusy('');
    }
  };
  const sync = (cluster: string) => act(`sync-${cluster}`, () => post(orgPath(org, `/locations/${enc(name)}/sync`), { cluster }));

  const columns: Column<LocationStatus>[] = [
    { header: 'Cluster', width: 'minmax(120px, 1fr)', cls: 'mono', render: (s) => <span title={s.cluster}>{s.clusterName}</span> },
    { header: 'Validation', width: '120px', render: (s) => <Badge state={s.validation.phase} testid="validation-phase" /> },
    { header: 'Failed step', width: '110px', render: (s) => (s.validation.failedStep ? <strong class="text-bad" data-testid="failed-step">{s.validation.failedStep}</strong> : '—') },
    { header: 'Reason', width: 'minmax(180px, 2.5fr)', cls: 'wrap-1', render: (s) => <span title={s.validation.reason ?? ''}>{s.validation.reason ?? '—'}</span> },
    { header: 'Checked', width: '90px', render: (s) => <Time at={s.validation.checkedAt} /> },
    {
      header: 'Sync',
      width: '150px',
      render: (s) =>
        s.sync ? (
          <span title={s.sync.message ?? ''}>
            <Badge state={s.sync.phase} /> {s.sync.phase === 'Completed' ? <span class="muted small">{s.sync.backupsImported}/{s.sync.backupsFound}</span> : null}
          </span>
        ) : (
          <span class="muted">—</span>
        ),
    },
    {
      header: 'Verify',
      width: '170px',
      render: (s) =>
        s.verify ? (
          <span title={s.verify.message ?? ''}>
            <Badge state={s.verify.phase} />{' '}
            {s.verify.phase === 'Completed' ? (
              <span class={`small ${s.verify.missingObjects ? 'text-bad' : 'muted'}`}>
                {s.verify.missingObjects ? `${s.verify.missingObjects} missing` : `${s.verify.backupsChecked} ok`}
              </span>
            ) : null}
          </span>
        ) : (
          <span class="muted">—</span>
        ),
    },
    ...(operator
      ? [
          {
            header: 'Actions',
            width: '80px',
            render: (s: LocationStatus) => (
              <button type="button" class="btn btn-small" disabled={!!busy || activeSync(s)} onClick={() => sync(s.clusterName)} aria-label={`Sync on ${s.clusterName}`}>
                Sync
              </button>
            ),
          },
        ]
      : []),
  ];

  const l = loc.data;
  return (
    <section data-testid="location-detail">
      <nav class="crumbs" aria-label="Breadcrumb">
        <a href={href('orgs', org, 'locations')}>Locations</a> <span aria-hidden="true">/</span> <span>{name}</span>
      </nav>
      <PageHeader title={`Location ${name}`}>
        {l && isFederatedAzure(l) && (
          <a class="btn" href={href('orgs', org, 'locations', name, 'federation')} data-testid="wi-help-link">
            Workload Identity setup
          </a>
        )}
        {operator && (
          <>
            <button type="button" class="btn" disabled={!!busy} onClick={() => act('validate', () => post(orgPath(org, `/locations/${enc(name)}/validate`)))} data-testid="location-validate">
              {busy === 'validate' ? 'Asking…' : 'Validate'}
            </button>
            <button type="button" class="btn" disabled={!!busy} onClick={() => act('verify', () => post(orgPath(org, `/locations/${enc(name)}/verify`)))} data-testid="location-verify">
              {busy === 'verify' ? 'Asking…' : 'Verify'}
            </button>
          </>
        )}
        {admin && (
          <ConfirmButton
            label="Delete"
            confirm={`Delete location ${name}?`}
            testid="location-delete"
            onConfirm={() =>
              act('delete', async () => {
                await del(orgPath(org, `/locations/${enc(name)}`));
                navigate(href('orgs', org, 'locations'));
              })
            }
          />
        )}
      </PageHeader>
      <ErrorBox error={loc.error} />
      <ErrorBox error={error} />
      {l && (
        <dl class="props">
          <div>
            <dt>Mode</dt>
            <dd>
              <ModeBadge l={l} />
            </dd>
          </div>
          <div>
            <dt>Provider</dt>
            <dd>{l.provider}</dd>
          </div>
          {l.account && (
            <div>
              <dt>Account</dt>
              <dd class="mono">{l.account}</dd>
            </div>
          )}
          <div>
            <dt>{l.provider === 'azure' ? 'Container' : 'Directory'}</dt>
            <dd class="mono">{l.container}</dd>
          </div>
          {l.prefix && (
            <div>
              <dt>Prefix</dt>
              <dd class="mono">{l.prefix}</dd>
            </div>
          )}
          {l.endpoint && (
            <div>
              <dt>Endpoint</dt>
              <dd class="mono">{l.endpoint}</dd>
            </div>
          )}
          {l.mode === 'federated' && (
            <div>
              <dt>Identity client id</dt>
              <dd class="mono">{l.clientId ?? '—'}</dd>
            </div>
          )}
          {l.mode === 'classic' && (
            <div>
              <dt>Credential</dt>
              <dd>{l.hasCredential ? 'stored (encrypted)' : 'none'}</dd>
            </div>
          )}
          <div>
            <dt>Assigned to</dt>
            <dd>{selectorText(l.clusters)}</dd>
          </div>
          <div>
            <dt>State</dt>
            <dd>{l.active ? <Badge state="Active" /> : <Badge state="Inactive" text={`Inactive: ${l.inactiveReason ?? ''}`} />}</dd>
          </div>
        </dl>
      )}
      {(vActive > 0 || fActive > 0 || sActive > 0) && (
        <div class="card progress-card">
          {vActive > 0 && <Progress label="Validation" done={rows.length - vActive} total={rows.length} testid="validate-progress" />}
          {fActive > 0 && <Progress label="Verify" done={rows.length - fActive} total={rows.length} testid="verify-progress" />}
          {sActive > 0 && (
            <p class="progress-line" role="status" data-testid="sync-progress">
              Sync running on {sActive} cluster{sActive === 1 ? '' : 's'}…
            </p>
          )}
        </div>
      )}
      <div class="section-head">
        <h2>Per cluster</h2>
        {rows.length > 0 && (
          <span class="muted small" data-testid="validation-summary">
            {rows.filter((s) => s.validation.phase === 'Valid').length} valid · {rows.filter((s) => s.validation.phase === 'Invalid').length} invalid ·{' '}
            {rows.filter((s) => !['Valid', 'Invalid'].includes(s.validation.phase)).length} pending
          </span>
        )}
      </div>
      <ErrorBox error={status.error} />
      {!status.data && status.loading && <Loading what="the status per cluster" />}
      {status.data && rows.length === 0 && <Empty>No cluster has this location yet. Clusters appear here once the server has delivered it.</Empty>}
      {rows.length > 0 && <VirtualTable rows={rows} columns={columns} rowKey={(s) => s.id} label="Location status per cluster" testid="location-status" />}
    </section>
  );
}

/** Quotes a value for a POSIX shell when it needs it. */
export function shq(s: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s) && !s.startsWith('-')) return s;
  if (/^<[a-z-]+>$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The federated credential of one cluster, as `pxb clusters federation` prints it. */
export function federationCommand(o: { name: string; identity: string; group: string; issuer: string }): string {
  return [
    `az identity federated-credential create --resource-group ${shq(o.group)} --identity-name ${shq(o.identity)}`,
    `--name ${shq(o.name)} --issuer ${shq(o.issuer)}`,
    `--subject ${AGENT_SUBJECT} --audiences ${AUDIENCE}`,
  ].join(' \\\n  ');
}

/**
 * The commands a location needs once, whatever its clusters, as `pxb clusters federation` prints
 * them: the managed identity (checked when the location names its client id, else created), its
 * role on the location's container only, and (for a new identity) its client id.
 */
export function identityCommands(o: { identity: string; group: string; account: string; container: string; clientId?: string | null }): string {
  const g = shq(o.group);
  const i = shq(o.identity);
  const lines = o.clientId
    ? [
        `# 1. The location names client id ${o.clientId}: check that it is ${o.identity} in ${o.group} (this prints it).`,
        `az identity show --resource-group ${g} --name ${i} --query clientId --output tsv`,
      ]
    : ['# 1. A managed identity for the agent.', `az identity create --resource-group ${g} --name ${i}`];
  lines.push(
    "# 3. Storage Blob Data Contributor on the location's container only.",
    `PRINCIPAL_ID=$(az identity show --resource-group ${g} --name ${i} --query principalId --output tsv)`,
    `ACCOUNT_ID=$(az storage account show --name ${shq(o.account)} --query id --output tsv)`,
    'az role assignment create --assignee-object-id "$PRINCIPAL_ID" \\',
    "  --assignee-principal-type ServicePrincipal --role 'Storage Blob Data Contributor' \\",
    `  --scope "$ACCOUNT_ID"/blobServices/default/containers/${shq(o.container)}`,
  );
  if (!o.clientId) {
    lines.push("# 4. The identity's client id: the location's clientId.", `az identity show --resource-group ${g} --name ${i} --query clientId --output tsv`);
  }
  return lines.join('\n');
}

const PAGE = 50;

export function FederationHelp({ org, name }: { org: string; name: string }) {
  const [identity, setIdentity] = useState('pxb-agent');
  const [group, setGroup] = useState('<resource-group>');
  const [filter, setFilter] = useState('');
  const [shown, setShown] = useState(PAGE);
  const loc = useData((signal) => get<LocationView>(orgPath(org, `/locations/${enc(name)}`), undefined, signal), [org, name]);
  const data = useData(
    async (signal) => {
      const [status, clusters] = await Promise.all([
        all<LocationStatus>(orgPath(org, `/locations/${enc(name)}/status`), {}, 50000, signal),
        all<ClusterRecord>(orgPath(org, '/clusters'), {}, 50000, signal),
      ]);
      return { status, clusters };
    },
    [org, name],
  );
  const byId = useMemo(() => new Map((data.data?.clusters ?? []).map((c) => [c.id, c])), [data.data]);
  const l = loc.data;
  const rows = (data.data?.status ?? []).filter((s) => !filter || s.clusterName.includes(filter));
  const clientIdOf = (cluster: string) => l?.clusterClientIds?.[cluster] ?? l?.clientId ?? null;

  return (
    <section data-testid="wi-help-page">
      <nav class="crumbs" aria-label="Breadcrumb">
        <a href={href('orgs', org, 'locations')}>Locations</a> <span aria-hidden="true">/</span>{' '}
        <a href={href('orgs', org, 'locations', name)}>{name}</a> <span aria-hidden="true">/</span> <span>Workload Identity</span>
      </nav>
      <PageHeader title={`Workload Identity setup · ${name}`} />
      <ErrorBox error={loc.error} />
      <ErrorBox error={data.error} />
      {l && !isFederatedAzure(l) && <Notice tone="warn">This location is not a federated Azure location: its clusters need no federated credential.</Notice>}
      <p class="lead">
        The pxb agent on each cluster signs in to Entra ID with its service-account token. Register one federated credential per cluster on the managed identity whose client id the location
        names; then give that identity the <strong>Storage Blob Data Contributor</strong> role on container <code>{l?.container ?? '…'}</code>
        {l?.account ? (
          <>
            {' '}
            of account <code>{l.account}</code>
          </>
        ) : null}
        .
      </p>
      <dl class="props">
        <div>
          <dt>Subject</dt>
          <dd class="mono" data-testid="wi-subject">
            {AGENT_SUBJECT}
          </dd>
        </div>
        <div>
          <dt>Audience</dt>
          <dd class="mono" data-testid="wi-audience">
            {AUDIENCE}
          </dd>
        </div>
        <div>
          <dt>Client id (location)</dt>
          <dd class="mono">{l?.clientId ?? '—'}</dd>
        </div>
      </dl>
      <div class="card form">
        <div class="form-row">
          <Field label="Managed identity name" hint="The identity whose client id the location uses">
            <input value={identity} onInput={(e) => setIdentity((e.currentTarget as HTMLInputElement).value)} data-testid="wi-identity" />
          </Field>
          <Field label="Resource group of the identity">
            <input value={group} onInput={(e) => setGroup((e.currentTarget as HTMLInputElement).value)} data-testid="wi-group" />
          </Field>
          <Field label="Filter clusters">
            <input value={filter} onInput={(e) => setFilter((e.currentTarget as HTMLInputElement).value)} type="search" />
          </Field>
        </div>
      </div>
      {l && isFederatedAzure(l) && l.account && (
        <div class="card">
          <h3>Once for the location</h3>
          <div class="cmd">
            <pre data-testid="wi-identity-commands">
              {identityCommands({ identity: identity || 'pxb-agent', group: group || '<resource-group>', account: l.account, container: l.container, clientId: l.clientId })}
            </pre>
            <CopyButton
              text={identityCommands({ identity: identity || 'pxb-agent', group: group || '<resource-group>', account: l.account, container: l.container, clientId: l.clientId })}
              what="the identity's commands"
              testid="wi-identity-copy"
            />
          </div>
          <h3>2. Per cluster: the federated credential (below)</h3>
        </div>
      )}
      {!data.data && data.loading && <Loading what="clusters" />}
      {data.data && rows.length === 0 && <Empty>No cluster has this location yet.</Empty>}
      <ul class="wi-list" data-testid="wi-list">
        {rows.slice(0, shown).map((s) => {
          const c = byId.get(s.cluster);
          const issuer = c?.serviceAccountIssuer ?? null;
          const cmd = issuer ? federationCommand({ name: s.clusterName, identity: identity || 'pxb-agent', group: group || '<resource-group>', issuer }) : '';
          const cid = clientIdOf(s.clusterName);
          return (
            <li key={s.id} class="card wi-item" data-testid="wi-item" data-cluster={s.clusterName}>
              <div class="wi-head">
                <h3 class="mono">{s.clusterName}</h3>
                <Badge state={s.validation.phase} />
                {s.validation.failedStep && <span class="text-bad small">failed at {s.validation.failedStep}</span>}
              </div>
              {s.validation.reason && <p class="reason wi-reason">{s.validation.reason}</p>}
              <dl class="props props-compact">
                <div>
                  <dt>Issuer</dt>
                  <dd>
                    <span class="mono" data-testid="wi-issuer">
                      {issuer ?? <span class="text-warn">none published</span>}
                    </span>{' '}
                    {issuer && <CopyButton text={issuer} what={`the issuer of ${s.clusterName}`} />}
                  </dd>
                </div>
                <div>
                  <dt>Client id</dt>
                  <dd class="mono">{cid ?? '—'}</dd>
                </div>
              </dl>
              {issuer ? (
                <div class="cmd">
                  <pre data-testid="wi-command">{cmd}</pre>
                  <CopyButton text={cmd} what={`the command for ${s.clusterName}`} testid="wi-copy" />
                </div>
              ) : (
                <Notice tone="warn">
                  {c?.source === 'imported'
                    ? 'An imported cluster has no issuer the server knows of.'
                    : <>The shoot publishes no service-account issuer. Annotate it with <code>authentication.gardener.cloud/issuer=managed</code>; the issuer appears here after the next discovery.</>}
                </Notice>
              )}
            </li>
          );
        })}
      </ul>
      {rows.length > shown && (
        <button type="button" class="btn" onClick={() => setShown(shown + PAGE)}>
          Show {Math.min(PAGE, rows.length - shown)} more of {rows.length - shown}
        </button>
      )}
    </section>
  );
}
