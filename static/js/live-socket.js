/* The websocket of a live page, as the board, the andon inbox and the evolution
 * review share it: the status badge, catching up after every (re)connect, and
 * leaving a page whose session has ended. Each page keeps its own swaps.
 *
 * The htmx ws extension connects and reconnects by itself, with a growing,
 * jittered pause; a consumer that closes with 1012 after a Redis outage
 * (kaizen_web.live's resync) is reconnected the same way. This file follows it:
 *
 *  - #live-status says "Connecting…", "Live" or "Reconnecting…";
 *  - on every open, the page re-reads what it shows (whatever changed between
 *    rendering it, or losing the socket, and now was not pushed to it), and
 *    says "Live" once that is done: from then on, every change arrives. A
 *    message that arrives while the page is catching up is held back, and the
 *    page catches up once more afterwards (the re-read under way may be older);
 *  - on every close, it asks the server the way htmx does whether the session
 *    still holds: a socket whose session has ended is refused at every
 *    reconnect, and the extension would retry forever. Without a session the
 *    answer is HX-Redirect to the login page (with `next` set to this page),
 *    and the browser goes there; a redirect that is not for htmx (a proxy's
 *    login, say) reloads the page; a 403 (the page's permission is gone) is the
 *    page's to say. Any other answer, or none (the server is down), leaves the
 *    extension to reconnect.
 *
 * A page's script, loaded after this one, calls once:
 *
 *   const socket = KaizenSocket.follow({
 *     root: () => the page's element, or null (looked up each time: a swap may replace it),
 *     url: () => what to ask after a close (a URL of the page's live part),
 *     catchUp: () => a promise, settled once the page shows the server's state
 *                    (or nothing: "Live" at once, nothing held back),
 *     refused: () => what to do when the server answers 403 (optional),
 *   });
 *
 * and gets socket.catchUp(), socket.catchingUp(), socket.checkSession() and
 * socket.setStatus(state, text).
 */
(function () {
  "use strict";

  if (window.KaizenSocket) return;

  function setStatus(state, text) {
    const live = document.getElementById("live-status");
    if (!live) return;
    live.className = "live live--" + state;
    live.querySelector(".live-text").textContent = text;
  }

  function follow(page) {
    let catchingUp = false;
    let missed = false;
    let checkingSession = false;

    function catchUp() {
      catchingUp = true;
      let done;
      try {
        done = Promise.resolve(page.catchUp());
      } catch (error) {
        done = Promise.reject(error);
      }
      return done
        .catch(function () {})
        .finally(function () {
          catchingUp = false;
          if (missed) {
            missed = false;
            return catchUp();
          }
        });
    }

    function checkSession() {
      const root = page.root();
      if (checkingSession || !root) return;
      checkingSession = true;
      fetch(page.url(), {
        headers: { "HX-Request": "true", "HX-Current-URL": window.location.href },
        credentials: "same-origin",
        redirect: "manual",
      })
        .then(function (response) {
          const login = response.headers.get("HX-Redirect");
          if (login) window.location.assign(login);
          else if (response.type === "opaqueredirect") window.location.reload();
          else if (response.status === 403 && page.refused) page.refused();
        })
        .catch(function () {})
        .finally(function () {
          checkingSession = false;
        });
    }

    document.addEventListener("htmx:wsBeforeMessage", function (event) {
      if (catchingUp) {
        event.preventDefault();
        missed = true;
      }
    });

    document.addEventListener("htmx:wsConnecting", function () {
      setStatus("connecting", "Connecting…");
    });
    document.addEventListener("htmx:wsOpen", function () {
      catchUp().then(function () {
        setStatus("up", "Live");
      });
    });
    document.addEventListener("htmx:wsClose", function () {
      setStatus("down", "Reconnecting…");
      checkSession();
    });

    return {
      catchUp: catchUp,
      catchingUp: function () {
        return catchingUp;
      },
      checkSession: checkSession,
      setStatus: setStatus,
    };
  }

  window.KaizenSocket = { follow: follow };
})();
