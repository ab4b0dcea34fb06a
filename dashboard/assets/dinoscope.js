// Keeps a page's parameters in the address bar without reloading the page, so a link reproduces the view.
// Inputs are the parameter values; the last argument (a State) lists their names in the same order.
window.dash_clientside = Object.assign({}, window.dash_clientside, {
    dinoscope: {
        syncQuery: function () {
            const values = Array.from(arguments);
            const names = values.pop();
            const query = new URLSearchParams();
            names.forEach(function (name, i) {
                const value = values[i];
                // An empty box, or a number the browser could not hold (NaN, Infinity), is left out of the URL.
                if (value === null || value === undefined || value === "") return;
                if (typeof value === "number" && !isFinite(value)) return;
                query.set(name, value);
            });
            window.history.replaceState(null, "", window.location.pathname + "?" + query.toString());
            return window.dash_clientside.no_update;
        },

        // An upload checked before it is sent: [the accepted data URL, the reason it was refused, hidden]. A refused
        // file leaves the accepted one as it was, so nothing is sent to the server.
        acceptUpload: function (contents, filename, limits) {
            const noUpdate = window.dash_clientside.no_update;
            if (!contents) { return [noUpdate, noUpdate, noUpdate]; }
            const header = contents.slice(0, contents.indexOf(",") + 1);
            const type = (/^data:([^;,]*)/.exec(header) || [])[1] || "";
            const bytes = Math.floor((contents.length - header.length) * 3 / 4);
            const name = filename || "The file";
            const megabytes = function (count) { return (count / 1048576).toFixed(1) + " MB"; };
            if (bytes > limits.bytes) {
                return [noUpdate, name + " is " + megabytes(bytes) + "; uploads are limited to " +
                    (limits.bytes / 1048576).toFixed(0) + " MB: save a smaller copy (the model sees only a few " +
                    "hundred pixels anyway).", false];
            }
            if (limits.types.indexOf(type) < 0) {
                return [noUpdate, name + (type ? " is of type " + type : " is not a file the browser knows as an image") +
                    ": upload a JPG or PNG.", false];
            }
            return [contents, "", true];
        }
    }
});
