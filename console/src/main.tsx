import './styles.css';
import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { describe } from './api';
import { oidcEnabled, signInWithCode, signInWithOidc, signOut, startAuth, useAuth } from './auth';
import { ErrorBox } from './components';
import { href, navigate, useRoute, type Route } from './router';
import { clearUser, currentOrg, loadUser, me } from './store';
import { FleetPage } from './pages/fleet';
import { OnboardingPage } from './pages/onboarding';
import { LocationsPage, LocationDetail, FederationHelp } from './pages/locations';
import { BackupsPage, BackupDetail } from './pages/backups';
import { RestoresPage, RestoreWizard, RestoreProgress } from './pages/restores';
import { SchedulesPage } from './pages/schedules';

function SignIn({ message }: { message?: string }) {
  const [code, setCode] = useState('');
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  return (
    <main class="signin" data-testid="signin-page">
      <div class="signin-card">
        <div class="brand brand-large">
          <span class="brand-mark" aria-hidden="true">
            pxb
          </span>
          <span>console</span>
        </div>
        <h1>Sign in</h1>
        {message && (
          <p class="alert alert-info" role="status" data-testid="signin-message">
            {message}
          </p>
        )}
        {oidcEnabled() && (
          <button
            type="button"
            class="btn btn-primary btn-block"
            data-testid="signin-oidc"
            disabled={busy}
            onClick={async () => {
              setBusy(true);
              setError(undefined);
              try {
                await signInWithOidc();
              } catch (e) {
                setError(e);
                setBusy(false);
              }
            }}
          >
            Sign in with Entra ID
          </button>
        )}
        <form
          class="signin-code"
          onSubmit={async (e) => {
            e.preventDefault();
            setBusy(true);
            setError(undefined);
            try {
              await signInWithCode(code.trim());
              navigate('#/fleet');
            } catch (err) {
              setError(err);
            } finally {
              setBusy(false);
            }
          }}
        >
          <label class="field">
            <span class="field-label">One-time code</span>
            <input
              type="text"
              autoComplete="off"
              spellcheck={false}
              value={code}
              data-testid="signin-code"
              onInput={(e) => setCode((e.currentTarget as HTMLInputElement).value)}
            />
            <span class="field-hint">
              Or open the <code>CONSOLE</code> link that <code>pxb demo</code> prints. A code works once.
            </span>
          </label>
          <button type="submit" class={`btn ${oidcEnabled() ? '' : 'btn-primary'}`} disabled={busy || !code.trim()} data-testid="signin-code-submit">
            Sign in with code
          </button>
        </form>
        <ErrorBox error={error} />
      </div>
    </main>
  );
}

const NAV: { id: string; label: string }[] = [
  { id: 'fleet', label: 'Fleet' },
  { id: 'onboarding', label: 'Onboarding' },
  { id: 'locations', label: 'Locations' },
  { id: 'backups', label: 'Backups' },
  { id: 'restores', label: 'Restores' },
  { id: 'schedules', label: 'Schedules' },
];

function TopBar({ route }: { route: Route }) {
  const w = me.use();
  const org = currentOrg.use();
  const orgs = w ? Object.keys(w.orgs).sort() : [];
  const section = route.parts[0] === 'orgs' ? route.parts[2] : route.parts[0];
  const role = w && org ? (w.providerAdmin ? 'provider admin' : w.orgs[org]) : undefined;
  return (
    <header class="topbar">
      <a class="brand" href="#/fleet">
        <span class="brand-mark" aria-hidden="true">
          pxb
        </span>
        <span>console</span>
      </a>
      <nav aria-label="Main">
        <ul class="nav">
          {NAV.map((n) => {
            const to = n.id === 'fleet' ? '#/fleet' : org ? href('orgs', org, n.id) : '#/fleet';
            return (
              <li key={n.id}>
                <a href={to} class="nav-link" aria-current={section === n.id ? 'page' : undefined} data-testid={`nav-${n.id}`}>
                  {n.label}
                </a>
              </li>
            );
          })}
        </ul>
      </nav>
      <div class="topbar-right">
        <label class="inline-field org-picker">
          <span>Org</span>
          <select
            data-testid="org-picker"
            value={org ?? ''}
            disabled={!orgs.length}
            onChange={(e) => {
              const o = (e.currentTarget as HTMLSelectElement).value;
              currentOrg.set(o);
              if (route.parts[0] === 'orgs') navigate(href('orgs', o, route.parts[2] ?? 'backups'));
            }}
          >
            {!orgs.length && <option value="">No org</option>}
            {orgs.map((o) => (
              <option key={o} value={o}>
                {o}
              </option>
            ))}
          </select>
        </label>
        <span class="user" data-testid="user" title={w?.subject}>
          <span class="user-name">{w?.name || w?.subject}</span>
          {role && <span class="user-role" data-testid="user-role">{role}</span>}
        </span>
        <button type="button" class="btn btn-small" data-testid="signout" onClick={() => void signOut()}>
          Sign out
        </button>
      </div>
    </header>
  );
}

function Page({ route }: { route: Route }) {
  const org = currentOrg.use();
  const [p0, p1, p2, p3, p4] = route.parts;
  // Keep the current org in step with the address.
  useEffect(() => {
    if (p0 === 'orgs' && p1 && p1 !== currentOrg.value) currentOrg.set(p1);
  }, [p0, p1]);
  if (!p0 || p0 === 'fleet' || p0 === 'signin') return <FleetPage />;
  if (p0 === 'orgs' && p1) {
    const o = p1;
    switch (p2) {
      case 'onboarding':
        return <OnboardingPage org={o} />;
      case 'locations':
        if (p3 && p4 === 'federation') return <FederationHelp org={o} name={p3} />;
        if (p3) return <LocationDetail org={o} name={p3} />;
        return <LocationsPage org={o} />;
      case 'backups':
        if (p3) return <BackupDetail org={o} id={p3} />;
        return <BackupsPage org={o} />;
      case 'restores':
        if (p3 === 'new') return <RestoreWizard org={o} backup={route.query.get('backup') ?? undefined} />;
        if (p3) return <RestoreProgress org={o} id={p3} />;
        return <RestoresPage org={o} />;
      case 'schedules':
        return <SchedulesPage org={o} />;
    }
  }
  return (
    <section>
      <h1>Not found</h1>
      <p>
        There is no page at <code>{location.hash}</code>. Go to the <a href="#/fleet">fleet</a>
        {org && (
          <>
            {' '}or the <a href={href('orgs', org, 'backups')}>backups of {org}</a>
          </>
        )}
        .
      </p>
    </section>
  );
}

function App() {
  const auth = useAuth();
  const route = useRoute();
  const [userError, setUserError] = useState<unknown>();
  const w = me.use();
  useEffect(() => {
    if (auth.status === 'signedIn') {
      setUserError(undefined);
      loadUser().catch(setUserError);
    } else if (auth.status === 'signedOut') clearUser();
  }, [auth.status]);
  // After a navigation (not the first page), focus moves to the new page's heading, so that
  // keyboard and screen-reader users start there.
  const firstRoute = useRef(true);
  useEffect(() => {
    if (firstRoute.current) {
      firstRoute.current = false;
      return;
    }
    const t = setTimeout(() => {
      const h = document.querySelector<HTMLElement>('#main h1') ?? document.getElementById('main');
      if (h && !h.contains(document.activeElement)) {
        if (!h.hasAttribute('tabindex')) h.setAttribute('tabindex', '-1');
        h.focus({ preventScroll: true });
      }
    }, 0);
    return () => clearTimeout(t);
  }, [route.parts.join("/")]);
  useEffect(() => {
    const titles: Record<string, string> = { fleet: 'Fleet' };
    const section = route.parts[0] === 'orgs' ? route.parts[2] : route.parts[0];
    document.title = `${titles[section ?? 'fleet'] ?? (section ? section[0].toUpperCase() + section.slice(1) : 'Fleet')} · pxb console`;
  }, [route]);
  if (auth.status === 'loading')
    return (
      <p class="loading center" role="status">
        Loading…
      </p>
    );
  if (auth.status === 'signedOut') return <SignIn message={auth.message} />;
  if (!w)
    return userError ? (
      <main class="signin">
        <div class="signin-card">
          <h1>Could not load your account</h1>
          <p class="alert alert-bad" role="alert">
            {describe(userError)}
          </p>
          <button type="button" class="btn" onClick={() => void signOut()}>
            Sign out
          </button>
        </div>
      </main>
    ) : (
      <p class="loading center" role="status">
        Loading your account…
      </p>
    );
  return (
    <div class="shell">
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById('main')?.focus(); }}>
        Skip to content
      </a>
      <TopBar route={route} />
      <main id="main" tabIndex={-1} class="content" data-testid="main">
        <Page route={route} />
      </main>
    </div>
  );
}

render(<App />, document.getElementById('app')!);
void startAuth();
