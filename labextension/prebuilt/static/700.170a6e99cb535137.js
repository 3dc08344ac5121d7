"use strict";(self.rspackChunknotebookos=self.rspackChunknotebookos||[]).push([[700],{646(t,e,o){var n=o(601),r=o.n(n),a=o(314),s=(o.n(a))()(r());s.push([t.id,`/* The status-bar item of the notebookos labextension: "GPU: 1 held", "GPU: waiting  <reason>", ... */
.notebookos-GpuStatus {
  cursor: pointer;
  display: flex;
  gap: 0.5em;
  max-width: 48em;
  white-space: nowrap;
}

.notebookos-GpuStatus-detail {
  overflow: hidden;
  text-overflow: ellipsis;
  color: var(--jp-ui-font-color2);
}

.notebookos-GpuStatus[data-state='waiting'] .notebookos-GpuStatus-label,
.notebookos-GpuStatus[data-state='migrating'] .notebookos-GpuStatus-label {
  color: var(--jp-warn-color0);
}

.notebookos-GpuStatus[data-state='held'] .notebookos-GpuStatus-label {
  color: var(--jp-success-color0);
}
`,""]),o.d(e,{},{A:s})},314(t){t.exports=function(t){var e=[];return e.toString=function(){return this.map(function(e){var o="",n=void 0!==e[5];return e[4]&&(o+="@supports (".concat(e[4],") {")),e[2]&&(o+="@media ".concat(e[2]," {")),n&&(o+="@layer".concat(e[5].length>0?" ".concat(e[5]):""," {")),o+=t(e),n&&(o+="}"),e[2]&&(o+="}"),e[4]&&(o+="}"),o}).join("")},e.i=function(t,o,n,r,a){"string"==typeof t&&(t=[[null,t,void 0]]);var s={};if(n)for(var i=0;i<this.length;i++){var c=this[i][0];null!=c&&(s[c]=!0)}for(var u=0;u<t.length;u++){var l=[].concat(t[u]);n&&s[l[0]]||(void 0!==a&&(void 0===l[5]||(l[1]="@layer".concat(l[5].length>0?" ".concat(l[5]):""," {").concat(l[1],"}")),l[5]=a),o&&(l[2]&&(l[1]="@media ".concat(l[2]," {").concat(l[1],"}")),l[2]=o),r&&(l[4]?(l[1]="@supports (".concat(l[4],") {").concat(l[1],"}"),l[4]=r):l[4]="".concat(r)),e.push(l))}},e}},601(t){t.exports=function(t){return t[1]}},72(t){var e=[];function o(t){for(var o=-1,n=0;n<e.length;n++)if(e[n].identifier===t){o=n;break}return o}function n(t,n){for(var r={},a=[],s=0;s<t.length;s++){var i=t[s],c=n.base?i[0]+n.base:i[0],u=r[c]||0,l="".concat(c," ").concat(u);r[c]=u+1;var p=o(l),d={css:i[1],media:i[2],sourceMap:i[3],supports:i[4],layer:i[5]};if(-1!==p)e[p].references++,e[p].updater(d);else{var f=function(t,e){var o=e.domAPI(e);return o.update(t),function(e){e?(e.css!==t.css||e.media!==t.media||e.sourceMap!==t.sourceMap||e.supports!==t.supports||e.layer!==t.layer)&&o.update(t=e):o.remove()}}(d,n);n.byIndex=s,e.splice(s,0,{identifier:l,updater:f,references:1})}a.push(l)}return a}t.exports=function(t,r){var a=n(t=t||[],r=r||{});return function(t){t=t||[];for(var s=0;s<a.length;s++){var i=o(a[s]);e[i].references--}for(var c=n(t,r),u=0;u<a.length;u++){var l=o(a[u]);0===e[l].references&&(e[l].updater(),e.splice(l,1))}a=c}}},659(t){var e={};t.exports=function(t,o){var n=function(t){if(void 0===e[t]){var o=document.querySelector(t);if(window.HTMLIFrameElement&&o instanceof window.HTMLIFrameElement)try{o=o.contentDocument.head}catch(t){o=null}e[t]=o}return e[t]}(t);if(!n)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");n.appendChild(o)}},540(t){t.exports=function(t){var e=document.createElement("style");return t.setAttributes(e,t.attributes),t.insert(e,t.options),e}},56(t,e,o){t.exports=function(t){var e=o.nc;e&&t.setAttribute("nonce",e)}},206(t){t.exports=function(t){if("u"<typeof document)return{update:function(){},remove:function(){}};var e=t.insertStyleElement(t);return{update:function(o){var n,r,a;n="",o.supports&&(n+="@supports (".concat(o.supports,") {")),o.media&&(n+="@media ".concat(o.media," {")),(r=void 0!==o.layer)&&(n+="@layer".concat(o.layer.length>0?" ".concat(o.layer):""," {")),n+=o.css,r&&(n+="}"),o.media&&(n+="}"),o.supports&&(n+="}"),(a=o.sourceMap)&&"u">typeof btoa&&(n+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(a))))," */")),t.styleTagTransform(n,e,t.options)},remove:function(){var t;null===(t=e).parentNode||t.parentNode.removeChild(t)}}}},113(t){t.exports=function(t,e){if(e.styleSheet)e.styleSheet.cssText=t;else{for(;e.firstChild;)e.removeChild(e.firstChild);e.appendChild(document.createTextNode(t))}}},959(t,e,o){var n=o(72),r=o.n(n),a=o(206),s=o.n(a),i=o(659),c=o.n(i),u=o(56),l=o.n(u),p=o(540),d=o.n(p),f=o(113),v=o.n(f),h=o(646),m={};m.styleTagTransform=v(),m.setAttributes=l(),m.insert=c().bind(null,"head"),m.domAPI=s(),m.insertStyleElement=d(),r()(h.A,m),h.A&&h.A.locals&&h.A.locals}}]);